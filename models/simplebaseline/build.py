"""SimpleBaseline's builders, reached through its registry records (`dipr.models.registry`)."""

from torch import nn

from dipr.models.registry import Architecture, BuiltPose, ExportRequest, TrainingRequest
from dipr.models.simplebaseline.heads import SCORE_WINDOW
from dipr.models.simplebaseline.network import SimpleBaseline
from dipr.models.simplebaseline.pose import SimpleBaselinePose
from dipr.models.simplebaseline.variants import arch_depth, check_input_size
from dipr.models.simplebaseline.weights import (
    load_pretrained,
    load_simplebaseline,
    resolve_mmpose_config,
)

SCORE_MEANING = (
    f"share of the softmax(beta*H) mass within the {SCORE_WINDOW}x{SCORE_WINDOW} heatmap cells "
    "around the map's arg-max: the probability the network's own distribution puts near its "
    "mode (high for one sharp peak, low for flat or multi-modal maps); 0 where the correction "
    "was ill-conditioned and the raw estimate was used"
)


def build_for_export(arch: Architecture, request: ExportRequest) -> BuiltPose:
    """From a `dipr train` checkpoint or an MMPose one: its input size, β and head as trained
    unless the request says otherwise."""
    checkpoint = request.source
    loaded = load_simplebaseline(
        arch_depth(arch.name), checkpoint, resolve_mmpose_config(request.mmpose_config)
    )
    size = request.input_size or loaded.input_size
    if size is None:
        raise ValueError(
            f"{checkpoint.name} does not say its input size: pass --input-size WxH "
            "(e.g. 192x256 for MMPose's 256x192 configs) or --mmpose-config"
        )
    check_input_size(size)
    if loaded.source == "mmpose" and loaded.input_size and size != loaded.input_size:
        # Its head normalised coordinates by this heatmap size: another size changes the maps.
        raise ValueError(
            f"{checkpoint.name} was trained at {loaded.input_size[0]}x"
            f"{loaded.input_size[1]} (its head's linspaces), not {size[0]}x{size[1]}"
        )
    beta = request.beta if request.beta is not None else loaded.beta
    if beta is None:
        raise ValueError(
            f"{checkpoint.name}: an MMPose integral checkpoint does not hold its softmax "
            "β; pass --mmpose-config (ipr_res50, ipr_res50_dsnt, ipr_res50_debias or the config "
            "file) or --beta (1 for ipr_res50 and ipr_res50_dsnt, 10 for ipr_res50_debias)"
        )
    network = loaded.network.half() if request.fp16 else loaded.network
    pose = SimpleBaselinePose(
        network, size, beta, request.debias, loaded.coordinates, request.flip_test
    ).eval()
    return BuiltPose(
        pose=pose,
        input_size=size,
        beta=pose.beta,
        coordinates=loaded.coordinates,
        trained_debias=loaded.trained_debias or "",
        score_meaning=SCORE_MEANING,
    )


def build_for_training(arch: Architecture, request: TrainingRequest) -> tuple[nn.Module, nn.Module]:
    """Trained through the paper's head in this project's coordinates: what `dipr export` then
    writes from the checkpoint."""
    network = SimpleBaseline(arch_depth(arch.name))
    if request.pretrained is not None:
        load_pretrained(network, request.pretrained)
    pose = SimpleBaselinePose(network, request.input_size, request.beta, "paper", "dipr")
    return pose, network
