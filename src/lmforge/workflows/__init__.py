"""End-to-end jobs built once from the layers below: the LM training run (:mod:`~lmforge.workflows.lm_run`), the
translation run (:mod:`~lmforge.workflows.translate_run`), chat fine-tuning (:mod:`~lmforge.workflows.finetune`),
the model comparison (:mod:`~lmforge.workflows.compare`) and the chatbot training
(:mod:`~lmforge.workflows.chatbot_training`)."""
