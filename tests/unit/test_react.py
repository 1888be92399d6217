"""stages.agents.react: parsing messy model turns, the Agent-R opening, context trimming."""
import re

import pytest

from stages.agents.react import (OK, REACT_FORMAT, ReactTurn, format_turn, initial_messages, message, parse_react,
                                 trim_context)


@pytest.mark.parametrize("text, thought, action", [
    ("Thought: I need wood.\nAction: get 1 oak logs", "I need wood.", "get 1 oak logs"),
    ("thought: lower case\naction: inventory", "lower case", "inventory"),
    ("THOUGHT: loud\nACTION: Get 2 Sticks", "loud", "Get 2 Sticks"),
    ("**Thought:** bold labels\n**Action:** craft 4 stick using 2 oak planks", "bold labels",
     "craft 4 stick using 2 oak planks"),
    ("**Thought**: bold words\n**Action**: `take coin`", "bold words", "take coin"),
    ("  \n\n  Thought:   padded   \n   Action:   move north   \n\n", "padded", "move north"),
    ("Thought: two actions\nAction: open door\nAction: move east", "two actions", "open door"),
    ("Thought: junk after\nAction: take coin\nObservation: You take the coin.\nThought: done", "junk after",
     "take coin"),
    ("Action: inventory", None, "inventory"),
    ("I should look first.\nAction: look around", "I should look first.", "look around"),
    ("```\nThought: fenced\nAction: take apple\n```", "fenced", "take apple"),
    ("```text\nThought: fenced with language\nAction: take apple\n```\nsome trailing words", "fenced with language",
     "take apple"),
    ("Thought: label alone\nAction:\n\nget 3 iron nugget\n", "label alone", "get 3 iron nugget"),
    ("### Thought: markdown heading\n### Action: eat meal", "markdown heading", "eat meal"),
    ("- Thought: a list\n- Action: read cookbook", "a list", "read cookbook"),
    ("Thought: quotes\nAction: \"put shirt in wardrobe\"", "quotes", "put shirt in wardrobe"),
    ("Thought: inline. Action: move west", "inline.", "move west"),
    ("Thought: full-width colon\nAction： take key", "full-width colon", "take key"),
    ("Thought: multi\nline thought\nAction: inventory", "multi\nline thought", "inventory"),
    ("Thought: crlf\r\nAction: take coin\r\n", "crlf", "take coin"),
    ("> Action: open fridge", None, "open fridge"),
])
def test_parse_messy_turns(text, thought, action):
    turn = parse_react(text)
    assert (turn.thought, turn.action, turn.parse_ok, turn.raw) == (thought, action, True, text)


@pytest.mark.parametrize("text", [
    "", "   ", "Thought: I am not sure what to do.", "I will get some wood", "Action:", "Action:   \n\n",
    "**Action:**   ", "Action:\nThought: changed my mind", "Actions are hard", "My plan of action is unclear.",
    "Action Plan: get wood", "```\n```",
])
def test_unparseable_is_never_guessed(text):
    turn = parse_react(text)
    assert turn.parse_ok is False and turn.action is None and turn.raw == text


def test_parse_keeps_raw_and_thought_when_no_action():
    turn = parse_react("Thought: stuck")
    assert turn == ReactTurn(thought="stuck", action=None, parse_ok=False, raw="Thought: stuck")


def test_format_turn_round_trips():
    for thought, action in [("go", "move north"), (None, "inventory"), ("multi\nline", "take coin")]:
        turn = parse_react(format_turn(thought, action))
        assert (turn.thought, turn.action, turn.parse_ok) == (thought, action, True)


try:
    from hypothesis import given, settings, strategies as st
except ImportError:
    given = None

if given is not None:
    _word = st.lists(st.text(alphabet=st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=8),
                     min_size=1, max_size=2).map("-".join)          # "T-shirt"
    _phrase = st.lists(_word, min_size=1, max_size=6).map(" ".join)
    _safe_phrase = _phrase.filter(lambda s: "action" not in s.lower() and "thought" not in s.lower())

    @settings(max_examples=200, deadline=None)
    @given(thought=_safe_phrase, action=_safe_phrase, bold=st.booleans(), case=st.sampled_from(["lower", "upper",
           "title"]), pad=st.sampled_from(["", " ", "  \t"]), fence=st.booleans(), tail=st.lists(_phrase, max_size=3),
           tick=st.booleans())
    def test_parse_recovers_any_rendered_turn(thought, action, bold, case, pad, fence, tail, tick):
        label = {"lower": str.lower, "upper": str.upper, "title": str.title}[case]
        t_lab, a_lab = label("thought") + ":", label("action") + ":"
        if bold:
            t_lab, a_lab = f"**{t_lab}**", f"**{a_lab}**"
        act = f"`{action}`" if tick else action
        text = f"{pad}{t_lab} {thought}{pad}\n{pad}{a_lab} {act}{pad}\n" + "\n".join(tail)
        if fence:
            text = f"```\n{text}\n```"
        turn = parse_react(text)
        assert turn.parse_ok and turn.action == action and turn.thought == thought and turn.raw == text

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=300))
    def test_parse_never_raises_and_never_invents(text):
        turn = parse_react(text)
        assert turn.raw == text
        assert turn.parse_ok == (turn.action is not None)
        if turn.parse_ok:               # only ever text that followed an explicit Action label
            assert turn.action.strip() and turn.action in text
            assert re.search(r"(?i)action\s*[*_`]*\s*[:：]", text)
else:
    @pytest.mark.skip(reason="hypothesis not installed")
    def test_parse_recovers_any_rendered_turn():
        pass


# ------------------------------------------------------------------------------------------ messages

def test_initial_messages_are_agent_r_opening():
    msgs = initial_messages("Craft things.", "Crafting commands:\n...\n\nGoal: craft stick.")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert [m["loss"] for m in msgs] == [False, False, False]
    assert msgs[0]["content"].startswith(REACT_FORMAT) and msgs[0]["content"].endswith("Craft things.")
    assert msgs[1]["content"] == OK
    assert msgs[2]["content"].endswith("Goal: craft stick.")
    assert "science" not in REACT_FORMAT.lower()
    assert "Thought:" in REACT_FORMAT and "Action:" in REACT_FORMAT


def test_message_loss_defaults():
    assert message("assistant", "x")["loss"] is True
    assert message("user", "x")["loss"] is False
    assert message("assistant", "x", loss=False)["loss"] is False


def conversation(pairs: int) -> list[dict]:
    msgs = initial_messages("instruction " * 10, "first observation " * 10)
    for i in range(pairs):
        msgs += [message("assistant", f"Thought: t{i}\nAction: a{i}"), message("user", f"obs {i} " * 5)]
    return msgs


def words(msgs):
    return sum(len(m["content"].split()) for m in msgs)


def test_trim_drops_oldest_pairs_and_keeps_the_first_exchange():
    msgs = conversation(6)
    budget = words(msgs) - 1
    trimmed, dropped = trim_context(msgs, words, budget)
    assert dropped == 1 and words(trimmed) <= budget
    assert trimmed[:3] == msgs[:3] and trimmed[3:] == msgs[5:]
    assert len(msgs) == 15                                      # the input is not changed
    trimmed, dropped = trim_context(msgs, words, words(msgs[:3]) + words(msgs[-4:]))
    assert dropped == 4 and trimmed == msgs[:3] + msgs[-4:]


def test_trim_never_drops_the_first_exchange_or_the_latest_observation():
    msgs = conversation(4)
    trimmed, dropped = trim_context(msgs, words, 1)
    assert trimmed == msgs[:3] + msgs[-2:] and dropped == 3
    assert trim_context(msgs[:3], words, 1) == (msgs[:3], 0)
    assert trim_context(msgs, words, 10**6) == (msgs, 0)


def test_trim_rejects_broken_turn_order():
    msgs = conversation(2)
    with pytest.raises(ValueError):
        trim_context(msgs[:-1], words, 1)
    with pytest.raises(ValueError):
        trim_context(msgs[:3] + [msgs[4], msgs[3]], words, 1)
