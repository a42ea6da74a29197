"""Fonts for class names in pictures: matplotlib's default font (DejaVu Sans) has no CJK glyphs, so Chinese,
Japanese or Korean class names would be drawn as empty boxes. When a text needs them, an installed font that has
them is added as a fallback after the usual family (Latin text keeps its look); when none is installed, one
warning says so and which font to install.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

# Fonts with CJK glyphs, most complete first (Noto/Source Han cover Chinese, Japanese and Korean).
CJK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans CJK HK",
    "Source Han Sans", "Source Han Sans SC", "Noto Sans SC", "Noto Sans JP", "Noto Sans KR",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN", "AR PL UKai CN",
    "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans", "Hiragino Sans GB", "Yu Gothic", "MS Gothic",
    "Malgun Gothic", "Apple SD Gothic Neo",
)
# Han (with extensions and compatibility), kana, Hangul, CJK punctuation and full-width forms.
_CJK = re.compile(
    "[\u2e80-\u2fdf\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff"
    "\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0002fa1f]"
)
_warned = False


def needs_cjk(texts: Iterable[str]) -> bool:
    """True when any text holds a CJK character."""
    return any(_CJK.search(str(text)) for text in texts)


def installed_font_names() -> set[str]:
    """Family names of the fonts matplotlib can use (its font cache)."""
    from matplotlib import font_manager

    return {entry.name for entry in font_manager.fontManager.ttflist}


def cjk_font() -> str | None:
    """The first installed font of ``CJK_FONTS``, or None."""
    installed = installed_font_names()
    return next((name for name in CJK_FONTS if name in installed), None)


@contextlib.contextmanager
def fonts_for(texts: Iterable[str]) -> Iterator[str | None]:
    """Build a figure inside this context so that ``texts`` (class names, titles) draw with their glyphs: when
    they hold CJK characters, an installed CJK font is the fallback family (yields its name); without one, a
    single warning per process (yields None). Text objects keep the family they are created with, so the
    figure may be saved after the context ends. Other texts leave matplotlib's settings untouched."""
    global _warned
    if not needs_cjk(texts):
        yield None
        return
    font = cjk_font()
    if font is None:
        if not _warned:
            _warned = True
            logger.warning(
                "class names with Chinese, Japanese or Korean characters: no installed font has their glyphs, so the "
                "pictures show them as boxes; install one (e.g. `apt-get install fonts-noto-cjk` or "
                "fonts-wqy-zenhei) and clear matplotlib's font cache (~/.cache/matplotlib) to draw them"
            )
        yield None
        return
    import matplotlib

    families = list(matplotlib.rcParams["font.family"])
    with matplotlib.rc_context({"font.family": [*families, font]}):
        yield font
