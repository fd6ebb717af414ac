"""The steps of the pose pipeline, one module each, in the order they run:
decode → crop → pose → to_image."""
