"""`dipr serve`: the pose service (ONNX Runtime, no torch).

http/ (the edge: routes, parsing, responses, status codes) → runtime (built from settings: the one
object the edge calls) → pipeline of stages/ (decode → crop → pose → to_image) → batcher
(crops of concurrent requests, no HTTP, no ONNX) → backend (ONNX Runtime sessions).
"""
