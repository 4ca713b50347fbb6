"""i2v-server's inference worker: diffusers' WanImageToVideoPipeline behind a line-JSON protocol.

Modules: `messages` and `loop` (the protocol), `models` (the model table), `checkpoint` (which checkpoint, checked
against its model), `pipeline` (loading and running the model), `encode` (MP4 via ffmpeg), `metadata` (what the
worker serves), `demo` (the tiny demo checkpoints). `python -m i2v_worker` runs it.
"""

__version__ = "0.1.0"
