"""The ONNX contract between `dipr export` and everything that runs its models (no torch here).

Input `image`: uint8 [N, H, W, 3] RGB. Outputs, float32: `keypoints` [N, K, 2] (x, y) debiased in
input pixels, `scores` [N, K], `keypoints_raw` [N, K, 2] uncorrected soft-argmax in input pixels;
optionally `keypoints_official`, the network's own published decode, for evaluation.
Metadata (ONNX metadata_props, all strings; JSON where structured) describes the rest.
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
DEBIAS = "debias"  # "true" | "false": whether `keypoints` carries the correction
SCORE_MEANING = "score_meaning"
SOURCE_WEIGHTS = "source_weights"
SOURCE_SHA256 = "source_weights_sha256"
PRECISION = "precision"  # "fp32" | "fp16" (backbone; the head is always fp32)
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
