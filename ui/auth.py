"""Optional login with Streamlit's built-in OpenID Connect support (st.login).

Off unless an [auth] section is configured in .streamlit/secrets.toml (see docs/deployment.md); then
only a logged-in user gets past the login screen. Streamlit adds ``is_logged_in`` to st.user exactly
when [auth] is configured, which is how the app tells.
"""

from __future__ import annotations

import streamlit as st

from .i18n import t


def require_login() -> None:
    """Stop the script at a login screen until the user has logged in (when login is configured)."""
    logged_in = st.user.get("is_logged_in")
    if logged_in is None:  # no [auth] in secrets.toml: the server is protected otherwise, or open
        return
    if logged_in:
        name = st.user.get("name") or st.user.get("email") or ""
        st.sidebar.button(t("logout", name=name), on_click=st.logout, key="logout", icon=":material/logout:")
        return
    st.title(t("app_title"))
    st.info(t("login_needed"), icon=":material/lock:")
    st.button(t("login"), on_click=st.login, type="primary", key="login", icon=":material/login:")
    st.stop()
