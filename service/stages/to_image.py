"""Stage: the pose model's keypoints (input pixels) → each person's pose in image pixels."""

from dipr.core import contract
from dipr.service.pipeline import ImageStage, ImageWork, PersonPose, required


class ToImageStage(ImageStage):
    offload = False  # a few small matrix products: cheaper than a thread hop

    def run_image(self, work: ImageWork) -> None:
        cropped = required(work.cropped, "cropped")
        outputs = required(work.pose_outputs, "pose_outputs")
        for row, (box, crop) in enumerate(zip(cropped.boxes, cropped.crops, strict=True)):
            scores = outputs[contract.SCORES][row]
            work.persons.append(
                PersonPose(
                    box=box,
                    score=float(scores.mean()),
                    keypoints=crop.to_image(outputs[contract.KEYPOINTS][row]),
                    keypoints_raw=crop.to_image(outputs[contract.KEYPOINTS_RAW][row]),
                    scores=scores,
                )
            )
