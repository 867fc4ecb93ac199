"""The training job: dataset snapshot, LoRA SFT and preference alignment with ms-swift, evaluation gate, export, publish."""
