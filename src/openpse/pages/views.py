"""Shopper-facing pages: the hosted checkout page (``/pay/{session}``) and the sandbox 3-D Secure
challenge (``/sandbox/3ds/{payment}``).

Not under ``/v1``: no request signing. The unguessable page token in the URL (or the form)
authenticates; a wrong or missing one is a plain 404. The card number and CVC are read from
the form, handed to the payment service and never written into any page, log or redirect.
Every text is looked up in ``STRINGS`` (one dict per locale) so localisation can grow there.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from jinja2 import Environment, PackageLoader
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response

from openpse.api.deps import ServicesDep
from openpse.domain.errors import InvalidRequest, NotFound
from openpse.domain.money import format_amount
from openpse.services import checkout as svc_checkout
from openpse.services.payments import CardInput

__all__ = ["STRINGS", "router"]

router = APIRouter(tags=["hosted pages"], include_in_schema=False)

DEFAULT_LOCALE: Final = "en"
MAX_FIELD_CHARS: Final = 64
MAX_NAME_CHARS: Final = 200
REFRESH_S: Final = 3
SANDBOX_TEST_CARD: Final = "4242\u00a04242\u00a04242\u00a04242"  # no line break inside
_INVALID_CARD_CODES: Final = frozenset({
    "invalid_number", "invalid_expiry_month", "invalid_expiry_year", "invalid_cvc"})

STRINGS: Final[dict[str, dict[str, str]]] = {
    "en": {
        "pay_title": "Pay {merchant}",
        "pay_to": "Payment to",
        "amount": "Amount",
        "order": "Order",
        "card_number": "Card number",
        "expiry": "Expiry date",
        "exp_month": "Month (MM)",
        "exp_year": "Year (YYYY)",
        "cvc": "Security code (CVC)",
        "name": "Name on card",
        "pay_button": "Pay {amount}",
        "cancel": "Cancel and return to {merchant}",
        "secure_note": "Your card details go over an encrypted connection and are never shown "
                       "again.",
        "sandbox_banner": "Sandbox: no real money moves. Test card: {card}, any future expiry, "
                          "any CVC.",
        "complete_title": "Payment received",
        "complete_body": "Thank you. Your payment of {amount} to {merchant} is complete.",
        "continue": "Continue to {merchant}",
        "expired_title": "This checkout has expired",
        "expired_body": "This payment page is no longer available. Return to {merchant} to "
                        "start again.",
        "return": "Return to {merchant}",
        "progress_title": "Payment in progress",
        "progress_body": "Your payment is being processed. This page refreshes by itself.",
        "refresh": "Refresh",
        "action_title": "Authentication needed",
        "action_body": "Your card issuer asks you to confirm this payment.",
        "action_link": "Continue to authentication",
        "not_found_title": "Page not found",
        "not_found_body": "This payment link is not valid. Check the link you were given.",
        "form_expired": "This form is out of date. Please enter your card details again.",
        "no_card": "Card payments are not available for this checkout.",
        "last_failed": "Your previous attempt did not go through: {message}",
        "declined_generic": "The card was declined. Please try another card.",
        "invalid_generic": "Please check the card details and try again.",
        "invalid_number": "The card number is not valid. Please check it for typos.",
        "invalid_expiry_month": "The expiry month is not valid, or the card has expired.",
        "invalid_expiry_year": "The expiry year is not valid, or the card has expired.",
        "invalid_cvc": "The security code is not valid (3 digits, 4 for American Express).",
        "threeds_title": "Sandbox 3-D Secure",
        "threeds_body": "A sandbox card issuer asks you to authenticate a payment of {amount} "
                        "to {merchant}.",
        "threeds_succeed": "Complete authentication",
        "threeds_fail": "Fail authentication",
        "threeds_done": "This authentication is finished: the payment is {status}.",
        "threeds_result_failed": "Authentication failed: {message}",
    },
    "ja": {
        "pay_title": "{merchant} へのお支払い",
        "pay_to": "お支払い先",
        "amount": "金額",
        "order": "注文番号",
        "card_number": "カード番号",
        "expiry": "有効期限",
        "exp_month": "月 (MM)",
        "exp_year": "年 (YYYY)",
        "cvc": "セキュリティコード",
        "name": "カード名義",
        "pay_button": "{amount} を支払う",
        "cancel": "キャンセルして {merchant} に戻る",
        "secure_note": "カード情報は暗号化された通信で送信され、再表示されることはありません。",
        "sandbox_banner": "サンドボックス: 実際のお金は動きません。テストカード: {card}"
                          "(有効期限は未来の日付、セキュリティコードは任意)",
        "complete_title": "お支払いを受け付けました",
        "complete_body": "{merchant} への {amount} のお支払いが完了しました。",
        "continue": "{merchant} に進む",
        "expired_title": "このお支払いページは期限切れです",
        "expired_body": "このページはご利用いただけません。{merchant} に戻って"
                        "もう一度お試しください。",
        "return": "{merchant} に戻る",
        "progress_title": "お支払い処理中",
        "progress_body": "お支払いを処理しています。このページは自動で更新されます。",
        "refresh": "更新",
        "action_title": "本人認証が必要です",
        "action_body": "カード発行会社がこのお支払いの確認を求めています。",
        "action_link": "本人認証に進む",
        "not_found_title": "ページが見つかりません",
        "not_found_body": "このお支払いリンクは無効です。受け取ったリンクをご確認ください。",
        "form_expired": "フォームの有効期限が切れました。カード情報をもう一度入力してください。",
        "no_card": "このお支払いではカードをご利用いただけません。",
        "last_failed": "前回のお支払いは完了しませんでした: {message}",
        "declined_generic": "カードが承認されませんでした。別のカードをお試しください。",
        "invalid_generic": "カード情報をご確認のうえ、もう一度お試しください。",
        "invalid_number": "カード番号が正しくありません。",
        "invalid_expiry_month": "有効期限の月が正しくないか、カードの有効期限が切れています。",
        "invalid_expiry_year": "有効期限の年が正しくないか、カードの有効期限が切れています。",
        "invalid_cvc": "セキュリティコードが正しくありません(3桁、American Express は4桁)。",
        "decline.card_declined": "カードが承認されませんでした。",
        "decline.insufficient_funds": "カードの利用可能額が不足しています。",
        "decline.expired_card": "カードの有効期限が切れています。",
        "decline.incorrect_cvc": "セキュリティコードが正しくありません。",
        "decline.processing_error": "カードの処理中にエラーが発生しました。"
                                    "もう一度お試しください。",
        "decline.authentication_failed": "本人認証に失敗しました。",
        "decline.fraudulent": "このカードでのお支払いはお受けできません。",
        "threeds_title": "サンドボックス 3-D セキュア",
        "threeds_body": "サンドボックスのカード発行会社が、{merchant} への {amount} のお支払いの"
                        "本人認証を求めています。",
        "threeds_succeed": "認証を完了する",
        "threeds_fail": "認証を失敗させる",
        "threeds_done": "この認証は終了しています(お支払いの状態: {status})。",
        "threeds_result_failed": "本人認証に失敗しました: {message}",
    },
}

_templates = Environment(loader=PackageLoader("openpse.pages", "templates"), autoescape=True,
                         trim_blocks=True, lstrip_blocks=True)

# No caching (per-shopper state), no framing (clickjacking), no Referer carrying the page token
# to the merchant's site, nothing loaded from elsewhere. No ``form-action``: browsers apply it
# to the redirect to the merchant's success_url too.
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


class Texts:
    """The strings of one locale; ``t(key, **values)`` falls back to English."""

    def __init__(self, locale: str) -> None:
        self.locale = locale
        self._own = STRINGS[locale]

    def has(self, key: str) -> bool:
        return key in self._own

    def __call__(self, key: str, **values: Any) -> str:
        text = self._own.get(key) or STRINGS[DEFAULT_LOCALE][key]
        return text.format(**values) if values else text


def _locale(request: Request, wanted: str | None) -> Texts:
    """The session's locale if we have its strings, else the browser's, else English."""
    tags = [wanted] if wanted and wanted != "auto" else []
    for part in request.headers.get("accept-language", "").split(",")[:10]:
        tags.append(part.split(";")[0].strip())
    for tag in tags:
        for candidate in (tag, tag.split("-")[0].lower()):
            if candidate in STRINGS:
                return Texts(candidate)
        if wanted and wanted != "auto":
            break  # a merchant's explicit choice we cannot serve yet: English, not the browser
    return Texts(DEFAULT_LOCALE)


def _html(name: str, t: Texts, status: int = 200, /, **ctx: Any) -> HTMLResponse:
    body = _templates.get_template(name).render(t=t, lang=t.locale, **ctx)
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def _not_found(request: Request) -> HTMLResponse:
    t = _locale(request, None)
    return _html("message.html", t, 404, title=t("not_found_title"), body=t("not_found_body"))


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _field(form: FormData, name: str, limit: int = MAX_FIELD_CHARS) -> str:
    value = form.get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""


def _int_or_raw(value: str, *, year: bool = False) -> int | str:
    """Form text to the int the card rules want; unparseable text is passed on to be refused."""
    if not value.isdigit():
        return value
    number = int(value)
    return 2000 + number if year and len(value) == 2 else number


# ---- the hosted checkout page -------------------------------------------------------------

def _summary(page: svc_checkout.PageSession) -> dict[str, Any]:
    s = page.session
    return {"merchant": page.merchant_name,
            "amount": format_amount(s["amount"], s["currency"]),
            "order": s["merchant_order_id"], "sandbox": not s["livemode"],
            "cancel_url": s["cancel_url"], "session_id": s["id"]}


def _form(request: Request, svc: Any, page: svc_checkout.PageSession, t: Texts, *,
          token: str, error: str | None = None, name: str = "", status: int = 200
          ) -> HTMLResponse:
    s = page.session
    if error is None and page.payment is not None and page.payment["failure_code"]:
        error = t("last_failed", message=_decline_text(t, page.payment["failure_code"],
                                                       page.payment["failure_message"]))
    return _html("pay.html", t, status, **_summary(page), error=error, holder_name=name,
                 token=token, nonce=svc_checkout.form_nonce(svc, s["id"], page.now),
                 card_accepted="card" in s["payment_method_types"],
                 test_card=SANDBOX_TEST_CARD)


def _decline_text(t: Texts, code: str | None, message: str | None) -> str:
    if code and t.has(f"decline.{code}"):
        return t(f"decline.{code}")
    return message or t("declined_generic")


def _state_page(request: Request, page: svc_checkout.PageSession, t: Texts,
                token: str) -> HTMLResponse | None:
    """The page for a session that cannot take a card now (paid, expired, or under way)."""
    info = _summary(page)
    s = page.session
    if s["status"] == "complete":
        return _html("message.html", t, title=t("complete_title"),
                     body=t("complete_body", amount=info["amount"], merchant=info["merchant"]),
                     link=svc_checkout.success_redirect_url(s),
                     link_text=t("continue", merchant=info["merchant"]))
    if not page.payable:
        return _html("message.html", t, title=t("expired_title"),
                     body=t("expired_body", merchant=info["merchant"]), link=s["cancel_url"],
                     link_text=t("return", merchant=info["merchant"]))
    p = page.payment
    if p is None or p["status"] in svc_checkout.RETRYABLE:
        return None
    action_url = (p["next_action"] or {}).get("url") if p["status"] == "requires_action" else None
    if action_url:
        return _html("message.html", t, title=t("action_title"), body=t("action_body"),
                     link=action_url, link_text=t("action_link"))
    here = f"/pay/{s['id']}?token={token}"
    return _html("message.html", t, title=t("progress_title"), body=t("progress_body"),
                 link=here, link_text=t("refresh"), refresh_url=here, refresh_s=REFRESH_S)


@router.get("/pay/{session_id}")
async def pay_page(session_id: str, request: Request, svc: ServicesDep) -> Response:
    token = request.query_params.get("token", "")
    try:
        page = await svc_checkout.load_page(svc, session_id, token)
    except NotFound:
        return _not_found(request)
    t = _locale(request, page.session["locale"])
    return _state_page(request, page, t, token) or _form(request, svc, page, t, token=token)


@router.post("/pay/{session_id}")
async def pay_submit(session_id: str, request: Request, svc: ServicesDep) -> Response:
    form = await request.form()
    token = _field(form, "token", 128)
    try:
        page = await svc_checkout.load_page(svc, session_id, token)
    except NotFound:
        return _not_found(request)
    t = _locale(request, page.session["locale"])
    name = _field(form, "name", MAX_NAME_CHARS)
    if not svc_checkout.check_form_nonce(svc, session_id, _field(form, "nonce", 128), page.now):
        return _state_page(request, page, t, token) or _form(
            request, svc, page, t, token=token, error=t("form_expired"), name=name, status=400)
    card = CardInput(number=_field(form, "number"),
                     exp_month=_int_or_raw(_field(form, "exp_month")),
                     exp_year=_int_or_raw(_field(form, "exp_year"), year=True),
                     cvc=_field(form, "cvc") or None, holder_name=name or None)
    result = await svc_checkout.pay_session(svc, session_id, token, card,
                                            base_url=_base_url(request),
                                            request_id=getattr(request.state, "request_id", None))
    if result.redirect_url:  # succeeded (to the merchant) or 3-D Secure (to the challenge)
        return RedirectResponse(result.redirect_url, status_code=303, headers=_HEADERS)
    if result.outcome in ("declined", "invalid"):
        if result.outcome == "declined":
            error, status = _decline_text(t, result.code, result.message), 402
        elif result.code == "payment_method_unavailable":
            error, status = t("no_card"), 400
        else:
            code = result.code if result.code in _INVALID_CARD_CODES else "invalid_generic"
            error, status = t(code), 400
        return _form(request, svc, result.page, t, token=token, error=error, name=name,
                     status=status)
    # in_progress or closed: another submit is ahead, or the session cannot take payment
    return _state_page(request, result.page, t, token) or _form(request, svc, result.page, t,
                                                                   token=token, name=name)


# ---- the sandbox 3-D Secure challenge -----------------------------------------------------

@router.get("/sandbox/3ds/{payment_id}")
async def challenge_page(payment_id: str, request: Request, svc: ServicesDep) -> Response:
    token = request.query_params.get("token", "")
    try:
        ch = await svc_checkout.load_challenge(svc, payment_id, token)
    except NotFound:
        return _not_found(request)
    return _challenge(request, ch, token)


def _challenge(request: Request, ch: svc_checkout.Challenge, token: str,
               error: str | None = None) -> HTMLResponse:
    t = _locale(request, None)
    p = ch.payment
    amount = format_amount(p["amount"], p["currency"])
    return _html("threeds.html", t, merchant=ch.merchant_name, amount=amount, token=token,
                 payment_id=p["id"], pending=ch.pending, payment_status=p["status"], error=error,
                 return_url=ch.return_url)


@router.post("/sandbox/3ds/{payment_id}")
async def challenge_submit(payment_id: str, request: Request, svc: ServicesDep) -> Response:
    form = await request.form()
    token = _field(form, "token", 128)
    outcome = _field(form, "outcome")
    try:
        ch, failure = await svc_checkout.complete_challenge(
            svc, payment_id, token, outcome, base_url=_base_url(request),
            request_id=getattr(request.state, "request_id", None))
    except NotFound:
        return _not_found(request)
    except InvalidRequest:  # no outcome button pressed: show the challenge again
        ch = await svc_checkout.load_challenge(svc, payment_id, token)
        return _challenge(request, ch, token)
    if ch.return_url:
        return RedirectResponse(ch.return_url, status_code=303, headers=_HEADERS)
    after = await svc_checkout.load_challenge(svc, payment_id, token)
    t = _locale(request, None)
    error = t("threeds_result_failed", message=failure) if failure else None
    return _challenge(request, after, token, error)
