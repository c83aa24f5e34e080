#!/usr/bin/env python3
"""Reference prompts rendered by OpenGVLab's own conversation templates.

Imports ``internvl_chat/internvl/conversation.py`` from a checkout of
https://github.com/OpenGVLab/InternVL (nothing is copied into this repository) and renders, for
every template name InternVL checkpoints put in ``config.json``'s ``template``, the prompt that
``InternVLChatModel.chat()`` builds: ``get_conv_template(name)``, the system message (the
template's own, or a ``config.system_message`` override), one user turn, the open assistant turn.
The result, ``fixtures/real/conversation_templates.json``, is what
``crates/model/tests/conversation_templates.rs`` compares our templates against.

Run:  python tools/conformance/conversation_templates.py --internvl PATH_TO_InternVL_CHECKOUT
      (or a bare git mirror: the file is read with ``git show <commit>:<path>``)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "real" / "conversation_templates.json"
PATH = "internvl_chat/internvl/conversation.py"
NAMES = ["internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat"]
USER_MESSAGES = [
    "<image>\nPlease evaluate the image generated from the prompt: 'a red fox in the snow'. "
    'Does the image match the prompt and have high visual quality? Please answer "yes" or "no".',
    "Image 1: <image>\nImage 2: <image>\nIs image 2 better than image 1?",
    "Frame1: <image>\nFrame2: <image>\n描述这个视频。",
    "",
]


def load_conversation(repo: Path) -> tuple[object, str]:
    """Imports conversation.py from a work tree or a bare mirror; returns (module, commit)."""
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    source = subprocess.run(
        ["git", "-C", str(repo), "show", f"{commit}:{PATH}"], check=True, capture_output=True, text=True
    ).stdout
    tmp = Path(tempfile.mkdtemp()) / "conversation.py"
    tmp.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("internvl_conversation", tmp)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, commit


def render(conv_module, name: str, system_message: str | None, user: str) -> str:
    template = conv_module.get_conv_template(name)
    if system_message is not None:
        template.system_message = system_message
    template.append_message(template.roles[0], user)
    template.append_message(template.roles[1], None)
    return template.get_prompt()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--internvl", type=Path, required=True, help="OpenGVLab/InternVL checkout or bare mirror")
    args = ap.parse_args()
    conv, commit = load_conversation(args.internvl)
    templates = {}
    for name in NAMES:
        t = conv.get_conv_template(name)
        cases = []
        for user in USER_MESSAGES:
            cases.append({"system_message": None, "user": user, "prompt": render(conv, name, None, user)})
        cases.append({"system_message": "Custom system.", "user": USER_MESSAGES[0],
                      "prompt": render(conv, name, "Custom system.", USER_MESSAGES[0])})
        templates[name] = {
            "system_message": t.system_message,
            "stop_token": t.sep.strip(),
            "cases": cases,
        }
    out = {
        "source": {"repository": "https://github.com/OpenGVLab/InternVL", "commit": commit, "path": PATH},
        "templates": templates,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(templates)} templates from {commit[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
