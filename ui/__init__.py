"""UI-only helpers for the Streamlit app (app.py and pages/): strings, model loading, run state, media.

Nothing here imports torch or touches the model directly: everything goes through ``lychee_rerank``.
"""
