from vidstyle.trainer.cli import train

train(prog_name="python -m vidstyle.trainer")
