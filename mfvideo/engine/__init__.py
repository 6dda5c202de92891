"""Engine stage: the DeepSpeed training loop, the evaluation loop, schedules, checkpoints and resume. It is handed
its model, loaders and evaluators (`trainer.TrainingParts`, `tester.TestParts`) and never asks which task runs;
`mfvideo.app` builds them."""
