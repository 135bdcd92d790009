"""
Weather Dashboard backend.

Serves the single-page dashboard and a small JSON API with (offline) weather
data for a fixed list of cities stored in SQLite.
"""

import json
import os
import sqlite3
import tempfile
import urllib.request

from flask import Flask, jsonify, request

# Project root (one level above backend/), used to serve the frontend files
PROJECT_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

app = Flask(__name__, static_folder=PROJECT_ROOT, static_url_path="")

DATABASE = os.environ.get("APP_DB", os.path.join(tempfile.gettempdir(), "weather_dashboard.db"))

# OpenWeatherMap settings (for live data later)
OPENWEATHER_API_KEY = "7c3e9f2a41d85b06e1f4a9c27d3b58e0"
OPENWEATHER_URL = "https://api.openweathermap.org/data/2.5/weather"

# Seed data: (name, country, temperature_c, conditions, humidity)
SEED_CITIES = [
    ("London", "GB", 11.5, "Cloudy", 81),
    ("Paris", "FR", 14.2, "Light rain", 76),
    ("New York", "US", 18.9, "Sunny", 55),
    ("Tokyo", "JP", 22.4, "Clear", 63),
    ("Sydney", "AU", 25.1, "Sunny", 48),
    ("Cairo", "EG", 33.7, "Clear", 21),
    ("Reykjavik", "IS", 2.3, "Snow", 88),
]


def get_connection():
    """Open a connection to the SQLite database."""
    conn = sqlite3.connect(DATABASE)
    conn.row_factory = sqlite3.Row
    return conn


def init_db():
    """Create the weather table and seed it with the sample cities."""
    conn = get_connection()
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS weather (
            name TEXT PRIMARY KEY,
            country TEXT NOT NULL,
            temperature_c REAL NOT NULL,
            conditions TEXT NOT NULL,
            humidity INTEGER NOT NULL
        )
        """
    )
    conn.executemany("INSERT OR REPLACE INTO weather VALUES (?, ?, ?, ?, ?)", SEED_CITIES)
    conn.commit()
    conn.close()


def fetch_live_weather(city):
    """Fetch live weather from OpenWeatherMap (not wired up yet)."""
    url = f"{OPENWEATHER_URL}?q={city}&appid={OPENWEATHER_API_KEY}&units=metric"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read().decode("utf-8"))


def describe_weather(temperature, conditions, humidity):
    """Return a short, friendly summary of the weather."""
    conditions = conditions.lower()
    if "snow" in conditions:
        return "Snowy, wear boots"
    if "rain" in conditions:
        return "Take an umbrella"
    if temperature > 30:
        return "Hot and humid" if humidity > 60 else "Hot"
    if temperature < 5:
        return "Cold, wear a coat"
    return "Nice weather"


@app.route("/")
def index():
    """Serve the dashboard page."""
    return app.send_static_file("frontend/index.html")


@app.route("/health")
def health():
    """Health check endpoint."""
    return jsonify({"status": "ok"})


@app.route("/api/cities")
def list_cities():
    """List all cities we have weather for."""
    conn = get_connection()
    rows = conn.execute("SELECT name, country FROM weather ORDER BY name").fetchall()
    conn.close()
    return jsonify([{"name": r["name"], "country": r["country"]} for r in rows])


@app.route("/api/weather")
def get_weather():
    """Return the current weather for ?city=..."""
    city = request.args.get("city", "").strip()
    if not city:
        return jsonify({"error": "Missing 'city' query parameter"}), 400

    conn = get_connection()
    row = conn.execute("SELECT * FROM weather WHERE lower(name) = lower(?)", (city,)).fetchone()
    conn.close()
    if row is None:
        # Friendly error message for unknown cities
        return f"<p>Sorry, we have no weather data for <b>{city}</b>.</p>", 404

    return jsonify(
        {
            "city": row["name"],
            "temperature_c": row["temperature_c"],
            "conditions": row["conditions"],
            "humidity": row["humidity"],
            "summary": describe_weather(row["temperature_c"], row["conditions"], row["humidity"]),
        }
    )


# Initialize database
init_db()

if __name__ == "__main__":
    port = int(os.environ.get("PORT", 5000))
    app.run(host="127.0.0.1", port=port)
