"""Stage: the pose model's keypoints (input pixels) → each person's pose in image pixels."""

from dipr.core import pose_contract
from dipr.service.pipeline import ImageStage, ImageWork, PersonPose, required


class ToImageStage(ImageStage):
    name = "to_image"
    offload = False  # a few small matrix products: cheaper than a thread hop

    def run_image(self, work: ImageWork) -> None:
        cropped = required(work.cropped, "cropped")
        outputs = required(work.pose_outputs, "pose_outputs")
        detected = work.detected
        for row, (box, crop) in enumerate(zip(cropped.boxes, cropped.crops, strict=True)):
            scores = outputs[pose_contract.SCORES][row]
            work.persons.append(
                PersonPose(
                    box=box,
                    score=float(scores.mean()),
                    keypoints=crop.to_image(outputs[pose_contract.KEYPOINTS][row]),
                    keypoints_raw=crop.to_image(outputs[pose_contract.KEYPOINTS_RAW][row]),
                    scores=scores,
                    box_score=None if detected is None else detected[row].score,
                )
            )
