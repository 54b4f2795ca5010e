"""passpush: push notifications to Apple Wallet and Google Wallet passes."""

# generated/passpush (protobuf code) and src/passpush share the package name:
# extend_path makes both one package when both roots are on sys.path.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
