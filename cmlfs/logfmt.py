"""Log values written as logfmt writes them, so that one event stays one parseable line.

cmlfs logs ``event=NAME key=value ...``. A value that holds a space, a quote, a
backslash, ``=`` or a character that is not printable is written in double quotes
with JSON escapes: free text (an error's reason, a path) can then neither run into
the next field nor forge one. Anything else is written as it is.
"""

import json


def quote(value: object) -> str:
    """``value`` as one logfmt value: bare when it is one plain word, else quoted."""
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text, ensure_ascii=False)
