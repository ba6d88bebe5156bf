"""/api/v1 auth endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("auth", __name__, url_prefix="/api/v1", description="auth")
