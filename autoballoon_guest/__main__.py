"""``python -m autoballoon_guest``: run the guest agent."""

import sys

from autoballoon_guest.agent import main

if __name__ == "__main__":
    sys.exit(main())
