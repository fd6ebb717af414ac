"""The ONNX contract between `dipr export` and everything that runs its models (no torch here).

Input `image`: uint8 [N, H, W, 3] RGB. Outputs, float32: `keypoints` [N, K, 2] (x, y) in input
pixel index coordinates (pixel centres at integers), debiased as `debias`/`debias_mode` say,
`scores` [N, K] in [0, 1], `keypoints_raw` [N, K, 2] uncorrected soft-argmax in input pixels;
optionally `keypoints_official`, the network's own published decode, for evaluation (MoveNet has
one, SimpleBaseline has none).
Metadata (ONNX metadata_props, all strings; JSON where structured) describes the rest. The keys in
METADATA_KEYS are always present; those in OPTIONAL_METADATA_KEYS are written by every current
export but absent from models exported before they existed, so readers must not require them.
"""

INPUT = "image"
KEYPOINTS = "keypoints"
SCORES = "scores"
KEYPOINTS_RAW = "keypoints_raw"
KEYPOINTS_OFFICIAL = "keypoints_official"
REQUIRED_OUTPUTS = (KEYPOINTS, SCORES, KEYPOINTS_RAW)

# metadata_props keys
NAME = "name"
VERSION = "version"
INPUT_SIZE = "input_size"  # JSON [width, height]
KEYPOINT_NAMES = "keypoint_names"  # JSON list of K names
SKELETON = "skeleton"  # JSON list of [i, j] 0-based limb pairs
BETA = "beta"
REGION = "region"  # "global" | "window" | "person"
WINDOW = "window"  # side of the k×k window, "" for the whole map
DEBIAS = "debias"  # "true" | "false": whether `keypoints` carries a correction (any mode)
SCORE_MEANING = "score_meaning"
SOURCE_WEIGHTS = "source_weights"
SOURCE_SHA256 = "source_weights_sha256"
PRECISION = "precision"  # "fp32" | "fp16" (backbone; the head is always fp32)
# Which correction `keypoints` carries: "paper" (Gu et al.'s closed form, β in C, |Ω| cells),
# "mmpose" (MMPose's IntegralRegressionHead debias=True: C without β, |Ω| = 1; nearly a no-op)
# or "none" (then `keypoints` equals `keypoints_raw` and DEBIAS is "false").
DEBIAS_MODE = "debias_mode"
# How heatmap index j became an input pixel: "dipr" ((j + 0.5)·stride − 0.5, cell centres; MoveNet
# and `dipr train` networks) or "mmpose" (j·stride − 0.5; networks trained with MMPose).
COORDINATES = "coordinates"
# The head the network was trained with ("paper", "mmpose", "none"), "" when unknown: compare
# with DEBIAS_MODE to see whether a model is served as it was trained.
TRAINED_DEBIAS = "trained_debias"
METADATA_KEYS = (
    NAME,
    VERSION,
    INPUT_SIZE,
    KEYPOINT_NAMES,
    SKELETON,
    BETA,
    REGION,
    WINDOW,
    DEBIAS,
    SCORE_MEANING,
    SOURCE_WEIGHTS,
    SOURCE_SHA256,
    PRECISION,
)
OPTIONAL_METADATA_KEYS = (DEBIAS_MODE, COORDINATES, TRAINED_DEBIAS)
