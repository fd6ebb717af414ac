"""dipr: pose estimation with the closed-form debiasing of integral pose regression."""
