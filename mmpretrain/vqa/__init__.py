"""VQA answers scored as the official VQA evaluation (GT-Vision-Lab/VQA, vqaEval.py)
scores them: its answer normalisation (`normalize`) and its VQAv2 accuracy against the
annotators' answers, beside exact match after normalisation (`accuracy`)."""
