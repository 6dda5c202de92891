"""The composition root, above every stage: the entry points of the tools. Each checks the whole recipe before any
process group or data (`mfvideo.tasks.rules`, the batch split, a resume's layout), builds the model, loaders and
evaluators of the recipe's task (`mfvideo.tasks`) and hands them to the engine, which knows no task."""
