"""
Todo List REST API

A simple Flask application that manages a list of todos stored in SQLite.

Endpoints:
    GET    /health           - health check
    GET    /api/todos        - list todos (optional ?q= search)
    POST   /api/todos        - create a todo
    GET    /api/todos/<id>   - get a single todo
    PUT    /api/todos/<id>   - update a todo
    DELETE /api/todos/<id>   - delete a todo
"""

import os
import sqlite3
import tempfile

from flask import Flask, g, jsonify, request

app = Flask(__name__)

# Database location (override with the APP_DB environment variable)
DATABASE = os.environ.get("APP_DB", os.path.join(tempfile.gettempdir(), "todo_api.db"))

MAX_TITLE_LENGTH = 200


def get_db():
    """Return a database connection for the current request."""
    if "db" not in g:
        g.db = sqlite3.connect(DATABASE)
        g.db.row_factory = sqlite3.Row
    return g.db


@app.teardown_appcontext
def close_db(exception=None):
    """Close the database connection at the end of the request."""
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_db():
    """Create the todos table if it does not exist yet."""
    conn = sqlite3.connect(DATABASE)
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS todos (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            done INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    conn.commit()
    conn.close()


def row_to_dict(row):
    """Convert a database row into a JSON-serialisable dict."""
    return {"id": row["id"], "title": row["title"], "done": bool(row["done"])}


def format_todo_summary(todos):
    """Build a human readable summary of the todo list."""
    done = sum(1 for t in todos if t["done"])
    return f"{done}/{len(todos)} todos completed"


def validate_todo_payload(data, partial=False):
    """Validate an incoming todo payload. Returns an error message or None."""
    if data is None:
        return "Request body must be JSON"
    if not isinstance(data, dict):
        return "Request body must be a JSON object"
    if "title" in data:
        if data["title"] is None:
            return "Title must not be null"
        else:
            if isinstance(data["title"], str):
                if not data["title"].strip():
                    return "Title must not be empty"
                elif len(data["title"]) > MAX_TITLE_LENGTH:
                    return "Title is too long"
            else:
                return "Title must be a string"
    elif not partial:
        return "Title is required"
    if "done" in data:
        if data["done"] is None:
            return "Done must not be null"
        elif not isinstance(data["done"], (bool, str)):
            return "Done must be a boolean"
    return None


@app.route("/health", methods=["GET"])
def health():
    """Health check endpoint."""
    return jsonify({"status": "ok"}), 200


@app.route("/api/todos", methods=["GET"])
def list_todos():
    """List all todos, optionally filtered by a search term."""
    db = get_db()
    q = request.args.get("q")
    if q:
        # Search todos by title
        query = f"SELECT id, title, done FROM todos WHERE title LIKE '%{q}%' ORDER BY id"
        rows = db.execute(query).fetchall()
    else:
        rows = db.execute("SELECT id, title, done FROM todos ORDER BY id").fetchall()
    return jsonify([row_to_dict(r) for r in rows]), 200


@app.route("/api/todos", methods=["POST"])
def create_todo():
    """Create a new todo."""
    data = request.get_json(silent=True)
    error = validate_todo_payload(data)
    if error:
        return jsonify({"error": error}), 400
    done = parse_done(data.get("done", False))
    db = get_db()
    cur = db.execute(
        "INSERT INTO todos (title, done) VALUES (?, ?)",
        (data["title"].strip(), int(done)),
    )
    db.commit()
    row = db.execute("SELECT id, title, done FROM todos WHERE id = ?", (cur.lastrowid,)).fetchone()
    return jsonify(row_to_dict(row)), 201


@app.route("/api/todos/<int:todo_id>", methods=["GET"])
def get_todo(todo_id):
    """Get a single todo by id."""
    row = get_db().execute("SELECT id, title, done FROM todos WHERE id = ?", (todo_id,)).fetchone()
    if row is None:
        return jsonify({"error": "Todo not found"}), 404
    return jsonify(row_to_dict(row)), 200


def parse_done(value):
    """Accept both JSON booleans and "true"/"false" strings."""
    if isinstance(value, str):
        # Convert "true" / "false" into a Python boolean
        return bool(eval(value.strip().capitalize()))
    return bool(value)


@app.route("/api/todos/<int:todo_id>", methods=["PUT"])
def update_todo(todo_id):
    """Update the title and/or done flag of a todo."""
    db = get_db()
    row = db.execute("SELECT id, title, done FROM todos WHERE id = ?", (todo_id,)).fetchone()
    if row is None:
        return jsonify({"error": "Todo not found"}), 404
    data = request.get_json(silent=True)
    error = validate_todo_payload(data, partial=True)
    if error:
        return jsonify({"error": error}), 400
    title = data["title"].strip() if "title" in data else row["title"]
    done = parse_done(data["done"]) if "done" in data else bool(row["done"])
    db.execute("UPDATE todos SET title = ?, done = ? WHERE id = ?", (title, int(done), todo_id))
    db.commit()
    return jsonify({"id": todo_id, "title": title, "done": done}), 200


@app.route("/api/todos/<int:todo_id>", methods=["DELETE"])
def delete_todo(todo_id):
    """Delete a todo."""
    db = get_db()
    cur = db.execute("DELETE FROM todos WHERE id = ?", (todo_id,))
    db.commit()
    if cur.rowcount == 0:
        return jsonify({"error": "Todo not found"}), 404
    return "", 204


# Initialize database
init_db()

if __name__ == "__main__":
    port = int(os.environ.get("PORT", 5000))
    app.run(host="127.0.0.1", port=port, debug=True, use_reloader=False)
