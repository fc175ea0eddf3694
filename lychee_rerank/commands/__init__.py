"""The command line's commands, one module each, over pieces they share (``common``).

``lychee_rerank.cli`` builds the parser from them; the Ray command (``scale_out.command``) uses the
same shared pieces. Nothing here imports ``cli``: no import circles.
"""
