import random
import string
from datetime import datetime

from flask import Flask, jsonify, redirect, request

app = Flask(__name__)

# In-memory storage for shortened URLs
# Maps short code -> {"url": ..., "created_at": ..., "clicks": ...}
url_store = {}

CODE_LENGTH = 6
CODE_CHARS = string.ascii_letters + string.digits


def generate_code(length=CODE_LENGTH):
    """Generate a random short code that is not already in use."""
    while True:
        code = ''.join(random.choice(CODE_CHARS) for _ in range(length))
        if code not in url_store:
            return code


def is_valid_url(url):
    """Basic check that the URL looks usable."""
    return isinstance(url, str) and len(url) > 0 and '.' in url


@app.after_request
def add_cors_headers(response):
    """Allow the React frontend to call the API."""
    response.headers['Access-Control-Allow-Origin'] = '*'
    response.headers['Access-Control-Allow-Headers'] = 'Content-Type'
    response.headers['Access-Control-Allow-Methods'] = 'GET, POST, OPTIONS'
    return response


@app.route('/shorten', methods=['POST', 'OPTIONS'])
def shorten_url():
    """Create a short code for the given URL."""
    if request.method == 'OPTIONS':
        return '', 204

    data = request.get_json(silent=True)
    if not data or 'url' not in data:
        return jsonify({'error': 'Missing "url" in request body'}), 400

    url = data['url'].strip()
    if not is_valid_url(url):
        return jsonify({'error': 'Invalid URL'}), 400

    code = generate_code()
    url_store[code] = {
        'url': url,
        'created_at': datetime.utcnow().isoformat(),
        'clicks': 0,
    }

    return jsonify({'code': code}), 201


@app.route('/stats/<code>', methods=['GET'])
def get_stats(code):
    """Return basic statistics for a short code."""
    entry = url_store.get(code)
    if entry is None:
        return jsonify({'error': 'Short code not found'}), 404
    return jsonify({'code': code, **entry}), 200


@app.route('/<code>', methods=['GET'])
def redirect_to_url(code):
    """Redirect a short code to its original URL."""
    entry = url_store.get(code)
    if entry is None:
        return jsonify({'error': 'Short code not found'}), 404

    entry['clicks'] += 1
    return redirect(entry['url'], code=302)


if __name__ == '__main__':
    app.run(port=8080)
