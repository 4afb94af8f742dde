"""The three-part prompt structure: checks and mechanical repairs on fixed strings (magihuman.prompting.structure)."""

from __future__ import annotations

import pytest

from magihuman.prompting.structure import (
    NO_BACKGROUND_SOUND,
    DialogueLine,
    apply_cjk_spacing,
    check_structure,
    count_body_words,
    parse_dialogue_line,
    repair,
)

from .fake_llm import BODY, BODY_WORDS, FIXABLE_ANSWER, FIXED_ANSWER, GOOD_ANSWER, NO_DIALOGUE_ANSWER


def codes(text: str) -> dict[str, str]:
    return {p.code: p.kind for p in check_structure(text)}


def test_well_formed_prompt_has_no_problem_and_repair_keeps_it():
    assert check_structure(GOOD_ANSWER) == []
    fixed = repair(GOOD_ANSWER)
    assert (fixed.text, fixed.fixes, fixed.remaining, fixed.ok) == (GOOD_ANSWER, (), (), True)


def test_official_example_prompt(examples_dir):
    """The shipped example: CSV-quoted (outer quotes, doubled ""), 207 body words, the "effects" spelling."""
    text = (examples_dir / "prompt.txt").read_text(encoding="utf-8")
    assert codes(text) == {"csv_quoting": "repairable", "body_length": "advisory"}
    fixed = repair(text)
    assert fixed.ok and [p.code for p in fixed.remaining] == ["body_length"]
    assert "207 words" in fixed.remaining[0].message
    assert fixed.text.endswith('Dialogue:\n<Man in green shirt, German>: "Pulver mit dran gemacht, gibt\'s ja auch als '
                               'Paste, aber als Pulver ist das hier ein bisschen..."\n\nBackground Sound:\n'
                               '<No prominent background sound effects>')
    assert not fixed.text.startswith('"') and '""' not in fixed.text


@pytest.mark.parametrize("raw, spaced", [
    # the original README's example: full-width punctuation is not spaced
    ("有的人在一起生活一辈子，还带着假面具呢", "有 的 人 在 一 起 生 活 一 辈 子，还 带 着 假 面 具 呢"),
    ("나비번알아", "나 비 번 알 아"),
    ("안녕하세요  여러분", "안 녕 하 세 요 여 러 분"),   # a word gap between two CJK characters becomes one space
    ("こんにちは世界", "こ ん に ち は 世 界"),
    ('He says "你好" twice', 'He says "你 好" twice'),
    ("你 好", "你 好"),                                   # already spaced: unchanged
    ("第一行\n第二行", "第 一 行\n第 二 行"),             # line breaks stay
    ("no CJK at all", "no CJK at all"),
])
def test_cjk_spacing(raw, spaced):
    assert apply_cjk_spacing(raw) == spaced
    assert apply_cjk_spacing(spaced) == spaced


def test_repairs_of_a_fixable_answer():
    """Code fence, markdown header, unspaced CJK and no Background Sound part: all mechanical."""
    assert codes(FIXABLE_ANSWER) == {"fence": "repairable", "header": "repairable", "no_background": "repairable",
                                     "cjk_spacing": "repairable"}
    fixed = repair(FIXABLE_ANSWER)
    assert fixed.ok and fixed.remaining == ()
    assert fixed.text == FIXED_ANSWER
    assert len(fixed.fixes) == 4 and any(NO_BACKGROUND_SOUND in fix for fix in fixed.fixes)
    assert check_structure(fixed.text) == []


def test_missing_dialogue_is_unrepairable():
    assert codes(NO_DIALOGUE_ANSWER) == {"no_dialogue": "unrepairable", "no_background": "repairable"}
    fixed = repair(NO_DIALOGUE_ANSWER)
    assert not fixed.ok and fixed.text == NO_DIALOGUE_ANSWER and fixed.fixes == ()
    assert [p.code for p in fixed.remaining] == ["no_dialogue"]


def test_parts_out_of_order_are_reordered():
    body, rest = GOOD_ANSWER.split("\n\nDialogue:\n")
    dialogue, background = rest.split("\n\nBackground Sound:\n")
    swapped = f"{body}\n\nBackground Sound:\n{background}\n\nDialogue:\n{dialogue}"
    assert codes(swapped) == {"order": "repairable"}
    assert repair(swapped).text == GOOD_ANSWER


def test_dialogue_and_background_lines_are_normalised():
    body = BODY.format(line='"Good morning."')
    text = (f"{body}\n\nDialogue: Woman in yellow sweater, English: “Good morning.”\n\n"
            "background sound:\nKettle whistling\nDog barking")
    assert codes(text) == {"header": "repairable", "dialogue_format": "repairable",
                           "background_lines": "repairable", "background_format": "repairable"}
    assert repair(text).text == (f'{body}\n\nDialogue:\n<Woman in yellow sweater, English>: "Good morning."\n\n'
                                 "Background Sound:\n<Kettle whistling>")


def test_unreadable_dialogue_line_and_empty_parts():
    body = BODY.format(line='"Hi."')
    assert codes(f"{body}\n\nDialogue:\nshe says hi\n\nBackground Sound:\n<Rain>")["dialogue_line"] == "unrepairable"
    assert codes(f"{body}\n\nDialogue:\n\nBackground Sound:\n<Rain>") == {"empty_dialogue": "unrepairable"}
    empty_sound = repair(f'{body}\n\nDialogue:\n<Woman, English>: "Hi."\n\nBackground Sound:\n<>')
    assert empty_sound.ok and empty_sound.text.endswith(f"Background Sound:\n{NO_BACKGROUND_SOUND}")


def test_body_length_limits():
    line = '<Woman, English>: "Hi."'
    short = "She smiles and says \"Hi.\" " + "word " * 90
    assert codes(f"{short}\n\nDialogue:\n{line}\n\nBackground Sound:\n<Rain>") == {"body_words": "unrepairable"}
    medium = "She smiles and says \"Hi.\" " + "word " * 120
    assert codes(f"{medium}\n\nDialogue:\n{line}\n\nBackground Sound:\n<Rain>") == {"body_length": "advisory"}
    long = "She smiles and says \"Hi.\" " + "word " * 300
    assert codes(f"{long}\n\nDialogue:\n{line}\n\nBackground Sound:\n<Rain>") == {"body_words": "unrepairable"}


def test_word_count_leaves_out_the_quoted_speech():
    assert count_body_words(BODY.format(line='"A B C D E F G H I J."')) == BODY_WORDS
    assert count_body_words('He says “one two three” and stops.') == 4


def test_cleanup_of_reasoning_label_and_paragraphs():
    split_body = GOOD_ANSWER.replace(" Her voice is warm", "\n\nHer voice is warm", 1)
    text = "<think>the user wants a prompt</think>\nEnhanced prompt:\n" + split_body
    assert codes(text) == {"reasoning": "repairable", "label": "repairable", "body_paragraphs": "repairable"}
    assert repair(text).text == GOOD_ANSWER


def test_a_sentence_starting_with_dialogue_is_not_a_header():
    text = GOOD_ANSWER.replace("Her overall mood", "Dialogue matters here. Her overall mood", 1)
    assert check_structure(text) == []


def test_parse_dialogue_line():
    assert parse_dialogue_line('<Young man in yellow polo, Mandarin>: "有 的 人"') == DialogueLine(
        "Young man in yellow polo", "Mandarin", "有 的 人")
    assert parse_dialogue_line('<Ana, a chef, Spanish>: “Hola.”') == DialogueLine("Ana, a chef", "Spanish", "Hola.")
    assert str(DialogueLine("Man", "German", "Ja.")) == '<Man, German>: "Ja."'
    for bad in ('Man, German: "Ja."', "<Man, German>: Ja.", '<Man>: "Ja."', ""):
        assert parse_dialogue_line(bad) is None
