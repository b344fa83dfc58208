"""Shopper-facing pages: the hosted checkout page (``/pay/{session}``) and the sandbox 3-D Secure
challenge (``/sandbox/3ds/{payment}``).

Not under ``/v1``: no request signing. The unguessable page token in the URL (or the form)
authenticates; a wrong or missing one is a plain 404. The card number and CVC are read from
the form, handed to the payment service and never written into any page, log or redirect.
Every text is looked up in ``STRINGS`` (one dict per locale) so localisation can grow there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter, Request
from jinja2 import Environment, PackageLoader
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response

from openpse.api.deps import ServicesDep
from openpse.domain.errors import InvalidRequest, NotFound
from openpse.domain.local_methods import ZONE_OFFSET_S
from openpse.domain.money import format_amount
from openpse.services import checkout as svc_checkout
from openpse.services import local_payments as svc_local
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
        "card_attempts_exhausted": "This checkout takes no more cards after several declined "
                                   "attempts. Use another payment method, or ask the shop for a "
                                   "new payment link.",
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
        # ---- local payment methods ----
        "choose_method": "Choose how to pay",
        "method.card": "Card",
        "method.konbini": "Convenience store (Konbini)",
        "method.pay_easy": "Pay-easy (ATM / online banking)",
        "method.bank_transfer": "Bank transfer",
        "method.boleto": "Boleto",
        "method.sepa_debit": "SEPA Direct Debit",
        "no_methods": "None of this checkout's payment methods can take this amount.",
        "customer_name": "Full name",
        "email": "E-mail",
        "phone": "Phone number",
        "tax_id": "CPF or CNPJ",
        "iban": "IBAN",
        "account_holder": "Account holder",
        "voucher_note.konbini": "You will get a payment number to pay in cash at the store "
                                "counter or terminal before the deadline.",
        "voucher_note.pay_easy": "You will get the numbers to pay at a bank ATM or in your "
                                 "online banking before the deadline.",
        "voucher_note.bank_transfer": "You will get an account to transfer the amount to. "
                                      "Your order is confirmed when the money arrives.",
        "voucher_note.boleto": "You will get a boleto to pay at any bank, lottery outlet or in "
                               "your internet banking before the due date.",
        "mandate_text": "By accepting this mandate, you authorise {merchant} and OpenPSE, its "
                        "payment provider, to send instructions to your bank to debit your "
                        "account, and your bank to debit your account in accordance with those "
                        "instructions. You are entitled to a refund from your bank under the "
                        "terms of your agreement with it: a refund must be claimed within 8 "
                        "weeks of the date your account was debited.",
        "mandate_accept": "I accept the SEPA Direct Debit mandate",
        "mandate_required": "Please accept the mandate to pay by SEPA Direct Debit.",
        "button.konbini": "Get a convenience store voucher",
        "button.pay_easy": "Get Pay-easy payment numbers",
        "button.bank_transfer": "Get bank transfer details",
        "button.boleto": "Generate boleto",
        "button.sepa_debit": "Pay {amount} by direct debit",
        "invalid_details": "Please check your details: {message}",
        "voucher_title.konbini": "Pay at a convenience store",
        "voucher_title.pay_easy": "Pay with Pay-easy",
        "voucher_title.bank_transfer": "Transfer to this account",
        "voucher_title.boleto": "Your boleto",
        "voucher_title.sepa_debit": "Direct debit submitted",
        "pay_by": "Pay by {deadline}",
        "due_date": "Due date",
        "payment_number": "Payment number",
        "confirmation_number": "Confirmation number",
        "institution_number": "Institution number (収納機関番号)",
        "customer_number": "Customer number (お客様番号)",
        "boleto_number": "Boleto number (linha digitável)",
        "barcode": "Barcode",
        "bank_name": "Bank",
        "bank_code": "Bank code",
        "branch": "Branch",
        "account_type": "Account type",
        "account_type.futsu": "Ordinary (普通)",
        "account_number": "Account number",
        "bic": "BIC",
        "reference": "Reference",
        "amount_remaining": "Amount still to transfer",
        "transfer_note": "Transfer exactly the amount shown. If you send less, the rest stays "
                         "due; if you send more, the difference is refunded to you.",
        "stores": "How to pay at each store",
        "store.seven_eleven": "7-Eleven",
        "store.familymart": "FamilyMart",
        "store.lawson": "Lawson",
        "store.ministop": "Ministop",
        "store.seicomart": "Seicomart",
        "store_code": "Code",
        "terminal.register": "Show the code at the register and pay in cash.",
        "terminal.multimedia_terminal": "At the Famiport terminal, enter the payment number and "
                                        "the confirmation number, then pay at the register "
                                        "within 30 minutes.",
        "terminal.loppi": "At the Loppi terminal, choose \"payment\", enter the payment number "
                          "and the confirmation number, then pay at the register within 30 "
                          "minutes.",
        "pay_easy_steps": "At a bank ATM with the Pay-easy mark, or in your online banking, "
                          "choose \"Taxes and fees (Pay-easy)\" and enter the numbers above.",
        "boleto_steps": "Pay at any bank, lottery outlet (lotérica) or in your internet banking "
                        "by typing or scanning the number above before the due date.",
        "mandate_reference": "Mandate reference",
        "creditor_id": "Creditor identifier",
        "debit_account": "Account debited",
        "expected_settlement": "Expected confirmation",
        "sepa_body": "Your bank will debit {amount} from your account. It takes a few days for "
                     "the payment to be confirmed; you can close this page.",
        "voucher_paid_title": "Payment received",
        "voucher_paid_body": "Thank you: {amount} was received.",
        "voucher_expired_title": "This voucher has expired",
        "voucher_expired_body": "The deadline has passed and the voucher can no longer be paid. "
                                "Do not pay it: return to the shop to order again.",
        "voucher_failed_title": "The payment did not go through",
        "voucher_failed_body": "Your bank did not accept the debit: {message}",
        "previous_expired": "Your previous voucher expired before it was paid. You can choose "
                            "a payment method again.",
        "keep_page": "Keep this page, or note the numbers: you need them to pay.",
        "invalid_field.name": "Please enter your full name.",
        "invalid_field.email": "Please enter a valid e-mail address.",
        "invalid_field.phone": "Please enter a Japanese phone number of 10 or 11 digits.",
        "invalid_field.tax_id": "The CPF or CNPJ is not valid: please check the digits.",
        "invalid_field.iban": "The IBAN is not valid: please check it for typos.",
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
        "card_attempts_exhausted": "カードのお支払いが複数回承認されなかったため、"
                                   "このお支払いではカードをご利用いただけなくなりました。"
                                   "別のお支払い方法をご利用いただくか、"
                                   "ショップに新しいお支払いリンクをお問い合わせください。",
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
        # ---- local payment methods ----
        "choose_method": "お支払い方法を選択してください",
        "method.card": "クレジットカード",
        "method.konbini": "コンビニ払い",
        "method.pay_easy": "ペイジー (ATM・ネットバンキング)",
        "method.bank_transfer": "銀行振込",
        "method.boleto": "ボレート",
        "method.sepa_debit": "SEPA口座振替",
        "no_methods": "このお支払いではご利用いただけるお支払い方法がありません。",
        "customer_name": "お名前",
        "email": "メールアドレス",
        "phone": "電話番号",
        "account_holder": "口座名義",
        "voucher_note.konbini": "お支払い番号が発行されます。期限までに店頭のレジまたは端末で"
                                "現金でお支払いください。",
        "voucher_note.pay_easy": "お支払いに必要な番号が発行されます。期限までに銀行ATMまたは"
                                 "ネットバンキングでお支払いください。",
        "voucher_note.bank_transfer": "振込先の口座が発行されます。ご入金の確認をもって"
                                      "ご注文が確定します。",
        "button.konbini": "コンビニ払いの番号を発行する",
        "button.pay_easy": "ペイジーの番号を発行する",
        "button.bank_transfer": "振込先を表示する",
        "invalid_details": "入力内容をご確認ください: {message}",
        "voucher_title.konbini": "コンビニでのお支払い",
        "voucher_title.pay_easy": "ペイジーでのお支払い",
        "voucher_title.bank_transfer": "お振込先",
        "pay_by": "お支払い期限: {deadline}",
        "payment_number": "お支払い番号 (受付番号)",
        "confirmation_number": "確認番号",
        "institution_number": "収納機関番号",
        "customer_number": "お客様番号",
        "bank_name": "銀行名",
        "bank_code": "銀行コード",
        "branch": "支店",
        "account_type": "口座種別",
        "account_type.futsu": "普通",
        "account_number": "口座番号",
        "reference": "お振込人名義の前に入力する番号",
        "amount_remaining": "残りのお振込金額",
        "transfer_note": "表示の金額を正確にお振り込みください。不足の場合は残額のお振込が"
                         "必要です。多くお振り込みの場合は差額を返金します。",
        "stores": "店舗ごとのお支払い方法",
        "store.seven_eleven": "セブン-イレブン",
        "store.familymart": "ファミリーマート",
        "store.lawson": "ローソン",
        "store.ministop": "ミニストップ",
        "store.seicomart": "セイコーマート",
        "store_code": "番号",
        "terminal.register": "レジで番号を提示し、現金でお支払いください。",
        "terminal.multimedia_terminal": "店内のFamiポートでお支払い番号と確認番号を入力し、"
                                        "発券された申込券を30分以内にレジへお持ちください。",
        "terminal.loppi": "店内のLoppiで「各種番号をお持ちの方」を選び、お支払い番号と確認番号"
                          "を入力し、発券された申込券を30分以内にレジへお持ちください。",
        "pay_easy_steps": "ペイジーマークのある銀行ATMまたはネットバンキングで「税金・料金払込み"
                          "(ペイジー)」を選び、上記の番号を入力してください。",
        "voucher_paid_title": "お支払いを受け付けました",
        "voucher_paid_body": "{amount} のお支払いを確認しました。ありがとうございました。",
        "voucher_expired_title": "お支払い期限が過ぎました",
        "voucher_expired_body": "お支払い期限を過ぎたため、この番号ではお支払いいただけません。"
                                "お支払いにならず、ショップで改めてご注文ください。",
        "previous_expired": "前回のお支払い番号は期限までにお支払いがありませんでした。"
                            "もう一度お支払い方法をお選びください。",
        "keep_page": "お支払いに必要ですので、このページを保存するか番号をお控えください。",
        "invalid_field.name": "お名前を入力してください。",
        "invalid_field.email": "正しいメールアドレスを入力してください。",
        "invalid_field.phone": "10桁または11桁の電話番号を入力してください。",
    },
    "pt-BR": {
        "pay_title": "Pagar {merchant}",
        "pay_to": "Pagamento para",
        "amount": "Valor",
        "order": "Pedido",
        "card_number": "Número do cartão",
        "expiry": "Validade",
        "exp_month": "Mês (MM)",
        "exp_year": "Ano (AAAA)",
        "cvc": "Código de segurança (CVC)",
        "name": "Nome no cartão",
        "pay_button": "Pagar {amount}",
        "cancel": "Cancelar e voltar para {merchant}",
        "secure_note": "Os dados do seu cartão são enviados por uma conexão criptografada e nunca "
                       "são mostrados novamente.",
        "sandbox_banner": "Sandbox: nenhum dinheiro real é movimentado. Cartão de teste: {card}, "
                          "qualquer validade futura, qualquer CVC.",
        "complete_title": "Pagamento recebido",
        "complete_body": "Obrigado. Seu pagamento de {amount} para {merchant} foi concluído.",
        "continue": "Continuar para {merchant}",
        "expired_title": "Este checkout expirou",
        "expired_body": "Esta página de pagamento não está mais disponível. Volte para "
                        "{merchant} para começar de novo.",
        "return": "Voltar para {merchant}",
        "progress_title": "Pagamento em andamento",
        "progress_body": "Seu pagamento está sendo processado. Esta página se atualiza "
                         "sozinha.",
        "refresh": "Atualizar",
        "action_title": "Autenticação necessária",
        "action_body": "O emissor do seu cartão pede que você confirme este pagamento.",
        "action_link": "Continuar para a autenticação",
        "not_found_title": "Página não encontrada",
        "not_found_body": "Este link de pagamento não é válido. Confira o link recebido.",
        "form_expired": "Este formulário está desatualizado. Preencha os dados novamente.",
        "no_card": "Pagamentos com cartão não estão disponíveis neste checkout.",
        "card_attempts_exhausted": "Este checkout não aceita mais cartões após várias "
                                   "tentativas recusadas. Use outra forma de pagamento ou peça "
                                   "à loja um novo link de pagamento.",
        "last_failed": "Sua tentativa anterior não foi concluída: {message}",
        "declined_generic": "O cartão foi recusado. Tente outro cartão.",
        "invalid_generic": "Confira os dados do cartão e tente novamente.",
        "invalid_number": "O número do cartão não é válido. Confira se há erros de digitação.",
        "invalid_expiry_month": "O mês de validade não é válido, ou o cartão expirou.",
        "invalid_expiry_year": "O ano de validade não é válido, ou o cartão expirou.",
        "invalid_cvc": "O código de segurança não é válido (3 dígitos, 4 no American Express).",
        "choose_method": "Escolha como pagar",
        "method.card": "Cartão",
        "method.konbini": "Loja de conveniência (Konbini)",
        "method.pay_easy": "Pay-easy",
        "method.bank_transfer": "Transferência bancária",
        "method.boleto": "Boleto bancário",
        "method.sepa_debit": "Débito direto SEPA",
        "no_methods": "Nenhuma forma de pagamento deste checkout aceita este valor.",
        "customer_name": "Nome completo",
        "email": "E-mail",
        "phone": "Telefone",
        "tax_id": "CPF ou CNPJ",
        "account_holder": "Titular da conta",
        "voucher_note.boleto": "Você receberá um boleto para pagar em qualquer banco, lotérica ou "
                               "no internet banking até a data de vencimento.",
        "button.boleto": "Gerar boleto",
        "invalid_details": "Confira seus dados: {message}",
        "voucher_title.boleto": "Seu boleto",
        "pay_by": "Pague até {deadline}",
        "due_date": "Vencimento",
        "boleto_number": "Linha digitável",
        "barcode": "Código de barras",
        "boleto_steps": "Pague em qualquer banco, lotérica ou no internet banking, digitando ou "
                        "lendo o código acima, até a data de vencimento.",
        "voucher_paid_title": "Pagamento recebido",
        "voucher_paid_body": "Obrigado: recebemos {amount}.",
        "voucher_expired_title": "Este boleto venceu",
        "voucher_expired_body": "A data de vencimento passou e este boleto não pode mais ser "
                                "pago. Não o pague: volte à loja para fazer o pedido de novo.",
        "previous_expired": "Seu boleto anterior venceu sem pagamento. Você pode escolher uma "
                            "forma de pagamento novamente.",
        "keep_page": "Guarde esta página ou anote o código: você precisará dele para pagar.",
        "invalid_field.name": "Informe seu nome completo.",
        "invalid_field.email": "Informe um e-mail válido.",
        "invalid_field.tax_id": "O CPF ou CNPJ não é válido: confira os dígitos.",
        "decline.card_declined": "O cartão foi recusado.",
        "decline.insufficient_funds": "O cartão não tem limite suficiente.",
        "decline.expired_card": "O cartão está vencido.",
        "decline.incorrect_cvc": "O código de segurança está incorreto.",
        "decline.processing_error": "Ocorreu um erro ao processar o cartão. Tente novamente.",
        "decline.authentication_failed": "A autenticação falhou.",
        "decline.fraudulent": "Não podemos aceitar pagamentos com este cartão.",
    },
}
# Languages we have under another tag (a browser's bare "pt" is served Brazilian Portuguese).
LOCALE_ALIASES: Final[dict[str, str]] = {"pt": "pt-BR"}
# The language a shopper of a currency's networks most likely reads (hosted voucher pages).
CURRENCY_LOCALES: Final[dict[str, str]] = {"JPY": "ja", "BRL": "pt-BR"}
ZONE_LABELS: Final[dict[str, str]] = {"JPY": "JST", "BRL": "BRT", "EUR": "CET"}

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


def _locale(request: Request, wanted: str | None, fallback: str = DEFAULT_LOCALE) -> Texts:
    """The session's locale if we have its strings, else the browser's, else ``fallback``."""
    tags = [wanted] if wanted and wanted != "auto" else []
    for part in request.headers.get("accept-language", "").split(",")[:10]:
        tags.append(part.split(";")[0].strip())
    for tag in tags:
        base = tag.split("-")[0].lower()
        for candidate in (tag, base, LOCALE_ALIASES.get(base, "")):
            if candidate in STRINGS:
                return Texts(candidate)
        if wanted and wanted != "auto":
            break  # a merchant's explicit choice we cannot serve yet: English, not the browser
    return Texts(fallback)


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


# The shopper's details each local method's form asks for (domain.local_methods checks them).
LOCAL_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "konbini": ("name", "email", "phone"),
    "pay_easy": ("name", "phone", "email"),
    "bank_transfer": ("name", "email"),
    "boleto": ("name", "email", "tax_id"),
    "sepa_debit": ("name", "email", "iban"),
}
_FIELD_INPUTS: Final[dict[str, tuple[str, str, str]]] = {  # label key, input type, autocomplete
    "name": ("customer_name", "text", "name"),
    "email": ("email", "email", "email"),
    "phone": ("phone", "tel", "tel"),
    "tax_id": ("tax_id", "text", "off"),
    "iban": ("iban", "text", "off"),
}
_PARAM_FIELDS: Final[dict[str, str]] = {
    "customer[name]": "name", "customer[email]": "email", "customer[phone]": "phone",
    "payment_method[boleto][tax_id]": "tax_id", "payment_method[sepa_debit][iban]": "iban",
    "payment_method[sepa_debit][account_holder_name]": "name",
}


def _form(request: Request, svc: Any, page: svc_checkout.PageSession, t: Texts, *,
          token: str, error: str | None = None, name: str = "", status: int = 200,
          selected: str | None = None, values: dict[str, str] | None = None) -> HTMLResponse:
    s = page.session
    p = page.payment
    if error is None and svc_checkout.card_attempts_exhausted(s):
        error = t("card_attempts_exhausted")  # says more than the last decline would
    elif error is None and p is not None and p["failure_code"]:
        error = t("last_failed", message=_decline_text(t, p["failure_code"],
                                                       p["failure_message"]))
    elif error is None and p is not None and p["cancellation_reason"] == "expired":
        error = t("previous_expired")
    methods = svc_checkout.offered_methods(s)
    prefill = {k: v for k, v in (s["customer"] or {}).items() if isinstance(v, str)}
    prefill.update(values or {})
    fields = {m: [(f, *_FIELD_INPUTS[f]) for f in LOCAL_FIELDS[m]] for m in methods
              if m in LOCAL_FIELDS}
    return _html("pay.html", t, status, **_summary(page), error=error, holder_name=name,
                 token=token, nonce=svc_checkout.form_nonce(svc, s["id"], page.now),
                 card_accepted="card" in methods, methods=methods, fields=fields,
                 selected=selected or (methods[0] if methods else None), values=prefill,
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
    if p["payment_method_type"] not in (None, "card"):  # a voucher, transfer or debit
        # The shopper may go back to the shop now: the session completes when the money arrives.
        return _voucher_page(t, p, info["merchant"], link=svc_checkout.success_redirect_url(s),
                             link_text=t("continue", merchant=info["merchant"]))
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
    method = _field(form, "method") or "card"
    if not svc_checkout.check_form_nonce(svc, session_id, _field(form, "nonce", 128), page.now):
        return _state_page(request, page, t, token) or _form(
            request, svc, page, t, token=token, error=t("form_expired"), name=name, status=400,
            selected=method if method in LOCAL_FIELDS else None)
    if method in LOCAL_FIELDS:
        return await _local_submit(request, svc, page, t, token, method, form)
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
        elif result.code == "card_attempts_exhausted":
            error, status = t("card_attempts_exhausted"), 429
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


async def _local_submit(request: Request, svc: Any, page: svc_checkout.PageSession, t: Texts,
                        token: str, method: str, form: FormData) -> Response:
    """A local method's form: the shopper's details; on success, back to the page (303), which
    then shows the voucher, the transfer details or the debit's mandate."""
    values = {f: _field(form, f, MAX_NAME_CHARS) for f in LOCAL_FIELDS[method]}
    customer = {k: values[k] for k in ("name", "email", "phone") if values.get(k)}
    details: dict[str, Any] = {}
    if values.get("tax_id"):
        details["tax_id"] = values["tax_id"]
    if values.get("iban"):
        details["iban"] = values["iban"]
    ip = getattr(request.state, "client_ip", None) or (request.client.host if request.client
                                                        else None)
    device = {k: v for k, v in (("ip", ip), ("user_agent", request.headers.get(
        "user-agent", "")[:1000])) if v}
    local = svc_checkout.LocalMethodForm(method, customer, details, device,
                                         mandate_accepted=_field(form, "mandate") == "accepted")
    result = await svc_checkout.pay_session(
        svc, page.session["id"], token, None, base_url=_base_url(request),
        request_id=getattr(request.state, "request_id", None), local=local)
    if result.redirect_url:
        return RedirectResponse(result.redirect_url, status_code=303, headers=_HEADERS)
    if result.outcome == "invalid":
        if result.code == "mandate_not_accepted":
            error = t("mandate_required")
        elif result.code == "payment_method_unavailable":
            error = t("no_methods")
        else:
            key = f"invalid_field.{_PARAM_FIELDS.get(result.param or '', '')}"
            error = t(key) if t.has(key) else t("invalid_details", message=result.message)
        return _form(request, svc, result.page, t, token=token, error=error, status=400,
                     selected=method, values=values)
    return _state_page(request, result.page, t, token) or _form(
        request, svc, result.page, t, token=token, selected=method, values=values)


# ---- vouchers, transfer details and debits ------------------------------------------------

def _deadline_text(ts: int | None, currency: str) -> str | None:
    if ts is None:
        return None
    zone = ZONE_OFFSET_S.get(currency, 0)
    local = datetime.fromtimestamp(ts + zone, UTC).strftime("%Y-%m-%d %H:%M")
    return f"{local} ({ZONE_LABELS.get(currency, 'UTC')})"


def _voucher_rows(t: Texts, p: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field, label, value) of what the shopper needs to pay, per method."""
    na = p["next_action"] or {}
    kind = p["payment_method_type"]
    if kind == "konbini":
        keys = ["payment_number", "confirmation_number"]
    elif kind == "pay_easy":
        keys = ["institution_number", "customer_number", "confirmation_number"]
    elif kind == "boleto":
        return [("number", t("boleto_number"), na.get("number", "")),
                ("barcode", t("barcode"), na.get("barcode", "")),
                ("due_date", t("due_date"), na.get("due_date", ""))]
    elif kind == "bank_transfer":
        return _transfer_rows(t, p, na)
    else:
        return _debit_rows(t, p)
    return [(k, t(k), str(na.get(k, ""))) for k in keys]


def _transfer_rows(t: Texts, p: dict[str, Any], na: dict[str, Any]
                   ) -> list[tuple[str, str, str]]:
    fa = na.get("financial_address") or {}
    if fa.get("type") == "iban":
        rows = [("bank_name", t("bank_name"), fa.get("bank_name", "")),
                ("iban", t("iban"), fa.get("iban", "")), ("bic", t("bic"), fa.get("bic", "")),
                ("account_holder_name", t("account_holder"), fa.get("account_holder_name", ""))]
    else:
        rows = [("bank_name", t("bank_name"), f"{fa.get('bank_name', '')} "
                 f"({fa.get('bank_code', '')})"),
                ("branch", t("branch"), f"{fa.get('branch_name', '')} "
                 f"({fa.get('branch_code', '')})"),
                ("account_type", t("account_type"), t(f"account_type.{fa.get('account_type')}")
                 if t.has(f"account_type.{fa.get('account_type')}") else
                 str(fa.get("account_type", ""))),
                ("account_number", t("account_number"), fa.get("account_number", "")),
                ("account_holder_name", t("account_holder"),
                 fa.get("account_holder_name", ""))]
    rows.append(("reference", t("reference"), str(na.get("reference", ""))))
    remaining = na.get("amount_remaining", p["amount"])
    rows.append(("amount_remaining", t("amount_remaining"),
                 format_amount(int(remaining), p["currency"])))
    return rows


def _debit_rows(t: Texts, p: dict[str, Any]) -> list[tuple[str, str, str]]:
    debit = (p["payment_method"] or {}).get("sepa_debit") or {}
    mandate = debit.get("mandate") or {}
    return [("mandate_reference", t("mandate_reference"), mandate.get("reference", "")),
            ("creditor_id", t("creditor_id"), mandate.get("creditor_id", "")),
            ("debit_account", t("debit_account"),
             f"{debit.get('country', '')} •••• {debit.get('last4', '')}"),
            ("expected_settlement", t("expected_settlement"),
             str(debit.get("expected_settlement_at", "")))]


def _voucher_page(t: Texts, p: dict[str, Any], merchant: str, *, link: str | None = None,
                  link_text: str | None = None) -> HTMLResponse:
    """A local-method payment as its shopper sees it: what to pay and how, or how it ended."""
    kind = p["payment_method_type"]
    amount = format_amount(p["amount"], p["currency"])
    base: dict[str, Any] = {"merchant": merchant, "amount": amount, "link": link,
                            "link_text": link_text}
    if p["status"] == "succeeded":
        return _html("voucher.html", t, **base, title=t("voucher_paid_title"),
                     body=t("voucher_paid_body", amount=amount))
    if p["status"] == "canceled":
        return _html("voucher.html", t, **base, title=t("voucher_expired_title"),
                     body=t("voucher_expired_body"))
    if p["status"] == "failed":
        return _html("voucher.html", t, **base, title=t("voucher_failed_title"),
                     body=t("voucher_failed_body", message=p["failure_message"] or ""))
    na = p["next_action"] or {}
    stores = [{"key": key, "name": t(f"store.{key}"), "code": d.get("payment_code"),
               "confirmation": d.get("confirmation_number"),
               "steps": t(f"terminal.{d.get('terminal')}")}
              for key, d in (na.get("stores") or {}).items()]
    deadline = _deadline_text(p["expires_at"], p["currency"])
    return _html("voucher.html", t, **base, title=t(f"voucher_title.{kind}"), kind=kind,
                 deadline=t("pay_by", deadline=deadline) if deadline else None,
                 rows=_voucher_rows(t, p), stores=stores,
                 steps=t(_STEPS[kind]) if kind in _STEPS else None,
                 body=t("sepa_body", amount=amount) if kind == "sepa_debit" else None,
                 note=t("transfer_note") if kind == "bank_transfer" else None,
                 keep=kind != "sepa_debit")


_STEPS: Final = {"pay_easy": "pay_easy_steps", "boleto": "boleto_steps"}


@router.get("/vouchers/{payment_id}")
async def voucher_page(payment_id: str, request: Request, svc: ServicesDep) -> Response:
    """The hosted voucher (``next_action.hosted_voucher_url``) of a payment made over the API."""
    token = request.query_params.get("token", "")
    try:
        payment, merchant = await svc_local.load_voucher(svc, payment_id, token)
    except NotFound:
        return _not_found(request)
    t = _locale(request, None, CURRENCY_LOCALES.get(payment["currency"], DEFAULT_LOCALE))
    return _voucher_page(t, payment, merchant)


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
