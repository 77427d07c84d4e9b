"""Text normalization: what a Chinese reader says for digits and symbols.

``normalize`` rewrites numbers, money, ranges, versions, dates, times,
percentages, phone numbers and units as Chinese characters. Latin letters
are kept: the phone mapper spells them with the voice's own syllables.

Every rule is one regular expression applied once over the text, and every
pattern starts where a run starts (a look-behind refuses a start inside a
run of digits), so each character is scanned a bounded number of times and
``normalize`` stays linear in the length of its text, whatever the text.
The order of the rules matters: the most specific readings (phone numbers,
dates) come first, plain numbers last.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from .spans import Tracked

_DIGITS = "零一二三四五六七八九"

# Units read after a number; longest first so "km/h" wins over "km".
_UNITS = {
    "km/h": "千米每小时",
    "MB/s": "兆字节每秒",
    "KB/s": "千字节每秒",
    "GB/s": "吉字节每秒",
    "Mbps": "兆比特每秒",
    "Gbps": "吉比特每秒",
    "m/s": "米每秒",
    "kg": "千克",
    "km": "千米",
    "cm": "厘米",
    "mm": "毫米",
    "ml": "毫升",
    "mg": "毫克",
    "GB": "吉字节",
    "MB": "兆字节",
    "KB": "千字节",
    "TB": "太字节",
    "Hz": "赫兹",
    "kHz": "千赫兹",
    "ms": "毫秒",
    "℃": "摄氏度",
    "°C": "摄氏度",
    "°": "度",
    "m": "米",
    "g": "克",
    "L": "升",
    "s": "秒",
    "h": "小时",
}
_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
#: Units after which 2 is still 二 (二摄氏度, not 两摄氏度).
_UNITS_KEEP_ER = {"℃", "°C", "°", "Hz", "kHz"}

#: Currency signs and codes, and the word said after the amount.
_CURRENCY_SIGNS = {
    "US$": "美元", "HK$": "港元", "NT$": "新台币", "C$": "加元", "A$": "澳元", "S$": "新加坡元",
    "JP¥": "日元", "¥": "元", "$": "美元", "€": "欧元", "£": "英镑", "₩": "韩元", "₽": "卢布", "₹": "卢比",
}
_CURRENCY_CODES = {
    "RMB": "元", "CNY": "元", "USD": "美元", "EUR": "欧元", "GBP": "英镑", "JPY": "日元", "HKD": "港元",
    "KRW": "韩元",
}
_SIGN_RE = "|".join(re.escape(s) for s in sorted(_CURRENCY_SIGNS, key=len, reverse=True))
_CODE_RE = "|".join(_CURRENCY_CODES)
#: Magnitudes after an amount: Chinese ones are said as written, Latin ones are multiplied out.
_SCALE = {"k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9}

#: Words after which 2 is 两 (两个, 两天, 两点); 第2个 stays 第二个.
_MEASURE = re.compile(
    "个|位|名|本|只|条|张|件|次|天|周|年(?!级)|小时|分钟|秒|岁|台|辆|家|种|项|杯|瓶|双|对|倍|份|篇|部|首|"
    "句|座|间|套|碗|块|斤|公斤|公里|米|千克|克|吨|元|美元|欧元|英镑|港元|日元|点|万|千|亿|人|节|场|组|批|轮|"
    "局|笔|所|架|艘|棵|颗|根|支|把|片"
)

#: Symbols read as words. "~" between numbers is 到 (ranges); elsewhere it is decoration.
_SYMBOLS = {
    "+": "加", "=": "等于", "&": "和", "@": "艾特", "×": "乘", "÷": "除以", "±": "正负",
    "≈": "约等于", "≠": "不等于", "≤": "小于等于", "≥": "大于等于", "<": "小于", ">": "大于",
    "‰": "千分之", "~": "", "^": "", "`": "", "|": "", "_": " ",
}

#: Words before digits that are read one by one, 1 as 幺 (电话12345, 验证码0815).
_CODE_WORDS = "密码|电话|热线|拨打|致电|手机|号码|尾号|验证码|分机|编号|工号|学号|邮编|房间|QQ"
#: Words around "3-1" that make it a score (三比一), not a range.
_SCORE_BEFORE = ("比分", "以")
_SCORE_AFTER = ("获胜", "战胜", "取胜", "击败", "落败", "告负", "险胜", "大胜", "完胜", "逆转", "赢", "输", "胜", "负")

# A number starts where a digit run starts: without the look-behind, a pattern
# that fails after a run of n digits is retried from each of its n positions,
# O(n^2) in one regex call that holds the GIL (2000 digits: about 0.4 s).
_NUMBER = r"-?(?<!\d)\d+(?:\.\d+)?"
_UNSIGNED = r"\d+(?:\.\d+)?"
_DASH = r"[-~–—]"
_PRIVATE = re.compile("[\U000f0000-\U000fffff]")


def _read_digits(digits: str, yao: bool = False) -> str:
    """Digit by digit, as codes and years are read (1 as 幺 in phone numbers with ``yao``)."""
    text = "".join(_DIGITS[int(d)] for d in digits)
    return text.replace("一", "幺") if yao else text


def read_digits(text: str, yao: bool = False) -> str:
    """Every ASCII digit of ``text`` said alone (SSML's ``say-as digits`` and ``telephone``); the rest kept."""
    return re.sub(r"[0-9]+", lambda m: _read_digits(m.group(0), yao), text)


def _read_integer(digits: str) -> str:
    """By value up to twelve significant digits; codes with a leading zero and longer strings digit by digit."""
    if len(digits) > 1 and digits.startswith("0"):
        return _read_digits(digits)
    # cn2an refuses more than 16 digits in all.
    if len(digits) <= 12:
        import cn2an  # on first use: its import compiles regexes for ~0.5 s of CPU

        text = cn2an.an2cn(digits)
        # 2000 is 两千, 20000 两万: a leading 二 before a magnitude is 两.
        return "两" + text[1:] if text[:2] in ("二千", "二万", "二亿") else text
    return _read_digits(digits)


def _read_number(number: str) -> str:
    """A decimal number by value: 1205.5 -> 一千二百零五点五."""
    negative = number.startswith("-")
    number = number.lstrip("-+")
    if "." in number:
        import cn2an  # on first use (see _read_integer)

        whole, frac = number.split(".", 1)
        whole = whole or "0"
        text = (cn2an.an2cn(whole) if len(whole) <= 12 and not (len(whole) > 1 and whole[0] == "0")
                else _read_integer(whole)) + "点" + _read_digits(frac)
    else:
        text = _read_integer(number)
    return ("负" if negative else "") + text


def _counted(number: str, after: str) -> str:
    """``number`` before ``after``: a lone 2 before a measure word is 两 (两个人, 两点)."""
    if number == "2" and _MEASURE.match(after):
        return "两"
    return _read_number(number)


def _hyphen(before: str) -> bool:
    """Whether a "-" after ``before`` joins words (COVID-19, A-3) rather than signing a number."""
    return before[-1:].isascii() and before[-1:].isalnum()


def _before(match: re.Match[str], width: int = 2) -> str:
    return match.string[max(0, match.start() - width) : match.start()]


def _after(match: re.Match[str], width: int = 3) -> str:
    return match.string[match.end() : match.end() + width]


def _phone(match: re.Match[str]) -> str:
    prefix = "加八六" if match.group(0).startswith("+86") else ""
    digits = re.sub(r"\D", "", match.group(0)[3:] if prefix else match.group(0))
    return prefix + _read_digits(digits, yao=True)


def _code(match: re.Match[str]) -> str:
    return match.group(1) + (match.group(2) or "") + _read_digits(match.group(3), yao=True)


def _date(match: re.Match[str]) -> str:
    year, month, day = match.group("y"), match.group("m"), match.group("d")
    text = ""
    if year:
        text += _read_digits(year) + "年"
    if year and len(year) == 2 and _after(match, 1) == "代" and not month:
        return _read_number(year) + "年"  # 80年代: 八十年代
    if month:
        text += _read_number(str(int(month))) + "月"
    if day:
        text += _read_number(str(int(day))) + ("日" if match.group("sfx") in ("日", "", None) else "号")
    return text


def _year_month(match: re.Match[str]) -> str:
    year, month = match.group(1), match.group(2)
    if not (1900 <= int(year) <= 2099 and 1 <= int(month) <= 12):
        return match.group(0)
    return _read_digits(year) + "年" + _read_number(str(int(month))) + "月"


def _time(match: re.Match[str]) -> str:
    hour, minute, second, half = match.group(1), match.group(2), match.group(3), match.group(4)
    if int(hour) > 24 or int(minute) > 59 or (second and int(second) > 59):
        return match.group(0)
    text = ("两" if hour in ("2", "02") else _read_number(str(int(hour)))) + "点"
    if int(minute):
        text += ("零" if minute.startswith("0") else "") + _read_number(str(int(minute))) + "分"
    if second and int(second):
        text += _read_number(str(int(second))) + "秒"
    if half:
        text = ("上午" if half[0] in "Aa" else "下午") + text
    return text


def _clock(match: re.Match[str]) -> str:
    """3pm -> 下午三点."""
    hour = match.group(1)
    if not 1 <= int(hour) <= 12:
        return match.group(0)
    return ("上午" if match.group(2)[0] in "Aa" else "下午") + ("两" if hour == "2" else _read_number(hour)) + "点"


def _ratio(match: re.Match[str]) -> str:
    return _read_number(match.group(1)) + "比" + _read_number(match.group(2))


def _percent(match: re.Match[str]) -> str:
    number = match.group(1)
    if number.startswith("-") and _hyphen(_before(match)):
        return "百分之" + _read_number(number[1:])  # "A-5%": a hyphen, not a sign
    sign = "负" if number.startswith("-") else ""
    return sign + "百分之" + _read_number(number.lstrip("-"))


def _fraction(match: re.Match[str]) -> str:
    return _read_number(match.group(2)) + "分之" + _read_number(match.group(1))


def _number_with_unit(match: re.Match[str]) -> str:
    number, unit = match.group(1), match.group(2)
    if number.startswith("-") and _hyphen(_before(match)):
        number = number[1:]  # "A-3kg": a hyphen
    said = "两" if number == "2" and unit not in _UNITS_KEEP_ER else _read_number(number)
    return said + _UNITS[unit]


def _amount(whole: str, frac: str, scale: str) -> str:
    """An amount with its magnitude: 1.2亿, 5k (五千), 1.5M (一百五十万)."""
    if scale in _SCALE:
        try:
            value = Decimal(whole + (frac or "")) * _SCALE[scale]
        except InvalidOperation:
            return _read_number(whole + (frac or ""))
        text = format(value.normalize(), "f")
        return _counted(text, "万") if "." not in text else _read_number(text)
    return _counted(whole + (frac or ""), scale or "元") + scale


def _money(whole: str, frac: str, scale: str, word: str) -> str:
    """An amount of ``word`` (元, 美元…); yuan decimals as 角 and 分, as a Chinese reader says them."""
    frac = frac[1:] if frac else ""
    if word != "元" or scale:
        frac = frac.rstrip("0")  # $2.80: 二点八美元
    if frac and not frac.strip("0"):
        frac = ""  # 12.00 -> 十二元
    if word == "元" and not scale and 0 < len(frac) <= 2:
        jiao, fen = frac[0], (frac[1:] or "0")
        text = "" if whole.strip("0") == "" else _counted(whole, "元") + "元"
        if jiao != "0":
            text += _DIGITS[int(jiao)] + "角"
        if fen != "0":
            text += ("零" if jiao == "0" and text else "") + _DIGITS[int(fen)] + "分"
        return text or "零元"
    return _amount(whole, "." + frac if frac else "", scale) + word


_MONEY_AMOUNT = r"(\d+)(\.\d+)?(万|亿|千|百|[kKMB](?![A-Za-z]))?"


def _money_sign(match: re.Match[str]) -> str:
    word = _CURRENCY_SIGNS[match.group(1)]
    first = _money(match.group(2), match.group(3), match.group(4) or "", word)
    if match.group(6) is None:
        return first
    second = _money(match.group(6), match.group(7), match.group(8) or "", word)
    if first.endswith(word):
        first = first[: -len(word)]  # ¥10-20: 十到二十元, the currency said once
    return first + "到" + second


def _money_code(match: re.Match[str]) -> str:
    """USD 100 or 100 USD."""
    if match.group(1):
        return _money(match.group(2), match.group(3), match.group(4) or "", _CURRENCY_CODES[match.group(1)])
    return _money(match.group(5), match.group(6), match.group(7) or "", _CURRENCY_CODES[match.group("code")])


def _money_yuan(match: re.Match[str]) -> str:
    return _money(match.group(1), match.group(2), "", "元")


def _range(match: re.Match[str]) -> str:
    first, unit, second = match.group(1), match.group(2) or "", match.group(3)
    after = _after(match, 2)
    if _before(match) in _SCORE_BEFORE or _before(match, 1) in _SCORE_BEFORE or after.startswith(_SCORE_AFTER):
        return _read_number(first) + "比" + _read_number(second)
    if unit == "%":
        said = "百分之" + _read_number(first)
    elif unit:
        said = ("两" if first == "2" and unit not in _UNITS_KEEP_ER else _read_number(first)) + _UNITS[unit]
    elif match.group(4) == "%":
        said = "百分之" + _read_number(first)
    else:
        said = _counted(first, after)
    return said + "到" + second


def _version(match: re.Match[str]) -> str:
    parts = match.group(2).split(".")
    return match.group(1).upper() + "点".join(_read_integer(p) for p in parts)


def _ip(match: re.Match[str]) -> str:
    parts = match.group(0).split(".")
    if any(int(p) > 255 for p in parts):
        return "点".join(_read_integer(p) for p in parts)
    return "点".join(_read_digits(p) for p in parts)


def _model_number(match: re.Match[str]) -> str:
    return match.group(1) + _read_digits(match.group(2))


def _plain_number(match: re.Match[str]) -> str:
    number = match.group(0)
    before = _before(match)
    if number.startswith("-") and _hyphen(before):
        return _plain_number_text(number[1:], match, before)  # COVID-19: a hyphen, not a sign
    return _plain_number_text(number, match, before)


def _plain_number_text(number: str, match: re.Match[str], before: str) -> str:
    latin = before[-1:] if before[-1:] != " " else before[:1]
    if "." in number and (latin.isascii() and latin.isalpha() or before.endswith("版本")):
        # Python 3.11, iOS 17.2, 版本3.10: a version, each part by value.
        return "点".join(_read_integer(p) for p in number.split("."))
    if before[-1:] == "第":
        return _read_number(number)
    return _counted(number, _after(match))


_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    # Thousands separators go first: every later rule sees 1234567.
    (re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3})+(?!\d|,\d)"), lambda m: m.group(0).replace(",", "")),
    # Phone numbers, digit by digit with 幺: mobile (+86 optional), landline, 400/800 service lines.
    (re.compile(r"(?<![\d+])(?:\+86[- ]?)?(1[3-9]\d)[- ]?(\d{4})[- ]?(\d{4})(?!\d)"), _phone),
    (re.compile(r"(?<!\d)(0\d{2,3})-(\d{7,8})(?!\d)"), _phone),
    (re.compile(r"(?<!\d)([48]00)[- ]?(\d{3})[- ]?(\d{4})(?!\d)"), _phone),
    (re.compile(rf"({_CODE_WORDS})((?:号码|号)?(?:是|为|:)?)\s?(\d{{3,}})(?![\d.])"), _code),
    # Ranges of years and dates, then dates, then ranges of times, then times.
    (re.compile(rf"(?<!\d)((?:19|20)\d\d)\s*{_DASH}\s*((?:19|20)\d\d)(?=年|届|赛季|学年|财年)"),
     lambda m: _read_digits(m.group(1)) + "到" + _read_digits(m.group(2))),
    (re.compile(rf"(?<=[日号年月])\s*{_DASH}\s*(?=\d)"), lambda m: "到"),
    (re.compile(r"(?<!\d)(?P<y>\d{4})[年/.-](?P<m>\d{1,2})[月/.-](?P<d>\d{1,2})(?P<sfx>[日号]?)"), _date),
    (re.compile(r"(?<!\d)(?P<y>\d{2,4})年(?:(?P<m>\d{1,2})月)?(?:(?P<d>\d{1,2})(?P<sfx>[日号]))?"), _date),
    (re.compile(r"(?<![\d年])(?P<y>)(?P<m>\d{1,2})月(?:(?P<d>\d{1,2})(?P<sfx>[日号]))?"), _date),
    (re.compile(r"(?<!\d)(\d{4})[-/](\d{1,2})(?![\d/.-])"), _year_month),
    (re.compile(rf"(周|星期)([一二三四五六日天])\s*{_DASH}\s*(?=周|星期)"), lambda m: m.group(1) + m.group(2) + "到"),
    (re.compile(rf"(?<![\d:])(\d{{1,2}}:\d{{2}})\s*{_DASH}\s*(?=\d{{1,2}}:\d{{2}})"), lambda m: m.group(1) + "到"),
    (re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?!\d)(?:\s?([AaPp]\.?[Mm]\.?)(?![A-Za-z]))?"), _time),
    (re.compile(r"(?<![\d.:])(\d{1,2})\s?([AaPp][Mm])(?![A-Za-z])"), _clock),
    (re.compile(r"(?<![\d.:])(\d+):(\d+)(?![\d:])"), _ratio),
    # Money: signs before (¥12.50, $5-10), codes before or after, 元 after.
    (re.compile(rf"({_SIGN_RE})\s?{_MONEY_AMOUNT}(?:\s?({_DASH})\s?(?:{_SIGN_RE})?\s?{_MONEY_AMOUNT})?元?"),
     _money_sign),
    (re.compile(rf"(?<![A-Za-z])(?:({_CODE_RE})\s?{_MONEY_AMOUNT}|(?<![\d.])(\d+)(\.\d+)?(万|亿)?\s?"
                rf"(?P<code>{_CODE_RE}))(?![A-Za-z])"),
     _money_code),
    (re.compile(r"(?<![\d.])(\d+)(\.\d{1,2})元"), _money_yuan),
    # Versions and addresses, before decimals: v1.2.3, 1.2.3, 192.168.1.1.
    (re.compile(r"(?<![A-Za-z\d.])([vV])(\d+(?:\.\d+)*)(?!\d|\.\d)"), _version),
    (re.compile(r"(?<![\d.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\d|\.\d)"), _ip),
    (re.compile(r"(?<![\d.])()(\d+(?:\.\d+){2,})(?!\d|\.\d)"), _version),
    # Model, flight and train numbers: RTX4090, CA1234, G1234.
    (re.compile(r"(?<![A-Za-z\d])([A-Z]{1,3})(\d{3,})(?![\d.])"), _model_number),
    # Ranges: 3-5个, 10~20%, 3kg-5kg, 1990-2000年, and scores (比分3-1).
    (re.compile(rf"(?<![A-Za-z\d.\-])(-?\d+(?:\.\d+)?)(%|{_UNIT_RE})?\s*{_DASH}\s*(\d+(?:\.\d+)?)(%)?"
                rf"(?!\d|\.\d|\s*{_DASH}\s*\d)"),
     lambda m: _range(m) + (m.group(4) or "")),
    (re.compile(rf"({_NUMBER})\s*%"), _percent),
    (re.compile(rf"({_NUMBER})\s*‱"), lambda m: "万分之" + _read_number(m.group(1))),
    (re.compile(r"(?<![\d/])(\d+)/(\d+)(?![\d/])"), _fraction),
    (re.compile(r"(?<=\d)\s?[*×xX]\s?(?=\d)"), lambda m: "乘"),
    (re.compile(rf"({_NUMBER})\s*({_UNIT_RE})(?![A-Za-z])"), _number_with_unit),
    # 元/斤, 次/天: "per".
    (re.compile(r"(?<=[元角块次个件人])/(?=平方米|平米|公斤|千克|公里|小时|分钟|[斤克吨个件人次天日月年周秒米升瓶盒份张晚间])"),
     lambda m: "每"),
    # example.com: 点 between the parts of a domain.
    (re.compile(r"(?<=[A-Za-z0-9])\.(?=[A-Za-z]{2,})"), lambda m: "点"),
    # Letters joined by a hyphen are one word (Wi-Fi, e-mail).
    (re.compile(r"(?<=[A-Za-z])-(?=[A-Za-z])"), lambda m: ""),
    (re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?"), _plain_number),
]


def normalize(text: str) -> str:
    """Rewrite ``text`` as it would be read aloud, in Chinese characters (Latin letters kept).

    Linear in the length of ``text`` (hostile input cannot make it slow).
    """
    return normalize_tracked(Tracked.of(text)).text


def normalize_tracked(text: Tracked) -> Tracked:
    """:func:`normalize`, each character of the result pointing at what it was read from ("十二" at "12")."""
    text = text.nfkc()
    # NFKC maps full-width punctuation to ASCII; keep Chinese sentence marks.
    text = text.replace("\r", "").replace("\t", " ")
    # Private-use characters of plane 15 are the lexicon's syllable marks: nobody else may write them.
    text = text.sub(_PRIVATE, lambda m: "")
    for pattern, replace in _RULES:
        text = text.sub(pattern, replace)
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    return text
