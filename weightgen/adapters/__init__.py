"""LoRA adapters generated for a task: a character-level base model made here (``charlm``), a family of
keyed cipher tasks (``cipher``), adapter zoos trained through peft (``zoo``) and adapters written in
peft's own format (``peft_io``). peft is imported only where adapters are trained, merged or written."""
