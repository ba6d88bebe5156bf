"""/api/v1 roles endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("roles", __name__, url_prefix="/api/v1", description="roles")
