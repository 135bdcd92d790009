from flask import Flask


def create_app():
    app = Flask(__name__)
    app.config['JSON_SORT_KEYS'] = False

    # Register blueprints
    from .routes import bp
    app.register_blueprint(bp, url_prefix='/api')

    # Allow requests from the Vite dev server
    @app.after_request
    def add_cors_headers(response):
        response.headers['Access-Control-Allow-Origin'] = '*'
        response.headers['Access-Control-Allow-Headers'] = 'Content-Type'
        response.headers['Access-Control-Allow-Methods'] = 'GET, POST, PUT, DELETE, OPTIONS'
        return response

    return app
