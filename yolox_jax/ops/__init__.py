"""Array ops shared by training, evaluation and the demo (boxes, NMS)."""
