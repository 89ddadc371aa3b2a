"""Layer 3: REST API, camera feeds and web page. Imports gallery and reid."""
