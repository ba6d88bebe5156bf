"""/api/v1 users endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("users", __name__, url_prefix="/api/v1", description="users")
