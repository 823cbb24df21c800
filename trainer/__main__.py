from trainer.cli import train

train(prog_name="python -m trainer")
