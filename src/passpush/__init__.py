"""passpush: push notifications to Apple Wallet and Google Wallet passes."""

# The protobuf code, passpush.v1, ships apart as the passpush-client distribution
# (clients/python), where `passpush` has no __init__.py (a namespace portion). Installed
# side by side in one site-packages the two share a directory and need nothing; installed
# editable (make setup) each is its own sys.path entry, and extend_path adds the client's
# `passpush` directory to this package's __path__ so that `import passpush.v1` finds it.
# (This package cannot be a namespace itself: it has code and data of its own.)
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
