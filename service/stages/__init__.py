"""The steps of the pose pipeline, one module each, in the order they run:
decode → letterbox → detect → crop → pose → to_image (letterbox and detect only where persons are
to be found)."""
