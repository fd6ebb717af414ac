"""The torch-free core that the service, evaluation and training share (imports none of them).

errors (domain errors, no HTTP), images (bytes → pixels), crops (boxes ↔ network inputs),
prepare (the two composed, as the service runs them), pose_contract (the pose models' ONNX
contract and its reader), keypoints (COCO names and skeleton), coco (COCO-format keypoint sets).
"""
