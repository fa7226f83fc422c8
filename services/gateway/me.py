"""The routes of a person's own account: signing up, in and out (local accounts), who am
I, my uploads, and taking an upload or everything back.

    POST   /api/account/signup   JSON {name, password} → 201, signed in (a session cookie)
    POST   /api/account/signin   JSON {name, password} → signed in; 401 wrong; 429 throttled
    POST   /api/account/signout  → 204, the session ended everywhere
    GET    /api/me               → {user, name, auth}; user null when not signed in
    DELETE /api/me               → the profile, the uploads, the account: all gone
    GET    /api/me/photos        → the uploads the profile learned from, each with a URL
    DELETE /api/me/photos/{id}   → that upload taken back
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from hashrec.v1 import user_pb2
from pydantic import BaseModel, Field

from services.gateway.accounts import USER_PREFIX, AccountError
from services.gateway.http import ApiError
from services.gateway.identity import SESSION_COOKIE, Identity
from services.gateway.uploads import RecentUploads


@dataclass
class Gateway:
    """What the gateway's routes share."""

    settings: object
    identity: Identity
    uploads: RecentUploads
    limits: object
    call: Callable[[str, object], Awaitable[object]]
    photo_url: Callable[[str, str | None], str | None]
    client_address: Callable[[Request], str | None]

    def owner(self, user: str | None) -> str | None:
        """Whose uploads a request keeps and sees: the principal's; with HASHREC_AUTH=none
        one shared store (""), as there is nobody to tell apart."""
        return "" if self.identity.mode == "none" else user


class Credentials(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    user: str | None
    name: str | None
    auth: str


class MyPhoto(BaseModel):
    photo_id: str
    url: str | None


class MyPhotos(BaseModel):
    photos: list[MyPhoto]


class Forgotten(BaseModel):
    photos_removed: int
    profile_removed: bool


def account_routes(gateway: Gateway) -> APIRouter:
    router = APIRouter()
    identity, settings = gateway.identity, gateway.settings

    def accounts():
        if identity.accounts is None:
            raise ApiError(404, "NOT_FOUND", f"accounts are not kept here: sign-in is "
                           f"{identity.mode}")
        return identity.accounts

    def signed_in(user_id: str, cookie: str, status: int = 200) -> JSONResponse:
        response = JSONResponse({"user": user_id, "name": user_id.removeprefix(USER_PREFIX),
                                 "auth": identity.mode}, status_code=status)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=accounts().session_seconds,
                            httponly=True, samesite="lax", secure=settings.secure_cookies,
                            path="/")
        return response

    async def account_call(work: Callable[[], tuple[str, str]]) -> tuple[str, str]:
        try:
            return await asyncio.to_thread(work)
        except AccountError as error:
            raise ApiError(error.status, {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED",
                                          409: "ALREADY_EXISTS"}[error.status],
                           str(error)) from None

    @router.post("/api/account/signup", status_code=201, response_model=Me)
    async def sign_up(request: Request, credentials: Credentials) -> JSONResponse:
        """A new account, signed in."""
        store = accounts()
        await gateway.limits.check("account", gateway.client_address(request))
        user, cookie = await account_call(
            lambda: store.sign_up(credentials.name, credentials.password))
        return signed_in(user, cookie, 201)

    @router.post("/api/account/signin", response_model=Me)
    async def sign_in(request: Request, credentials: Credentials) -> JSONResponse:
        """Signs in; repeated failures for a name or from an address are throttled."""
        store = accounts()
        name = credentials.name.strip().lower()
        await gateway.limits.check("account", gateway.client_address(request))
        # a name that failed too often is refused before its password is even tried
        await gateway.limits.check("sign-in-name", name, count=False)
        try:
            user, cookie = await account_call(
                lambda: store.sign_in(credentials.name, credentials.password))
        except ApiError as error:
            if error.status == 401:  # only failures count against the name
                await gateway.limits.check("sign-in-name", name)
            raise
        return signed_in(user, cookie)

    @router.post("/api/account/signout", status_code=204)
    async def sign_out(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and identity.accounts is not None:
            await asyncio.to_thread(identity.accounts.sign_out, cookie)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                               secure=settings.secure_cookies)
        return response

    @router.get("/api/me", response_model=Me)
    async def me(request: Request) -> Me:
        user = await identity.principal(request)
        return Me(user=user, name=None if user is None else user.removeprefix(USER_PREFIX),
                  auth=identity.mode)

    @router.delete("/api/me", response_model=Forgotten)
    async def delete_me(request: Request) -> JSONResponse:
        """Everything of yours: the profile, the uploads, the account. The user service
        forgets first; only then does the account go, so a failure leaves you signed in
        to try again."""
        user = await identity.required(request)
        reply = await gateway.call("Forget", user_pb2.ForgetRequest(user_id=user))
        if identity.mode != "none":
            gateway.uploads.remove(user)
        if identity.accounts is not None:
            await asyncio.to_thread(identity.accounts.delete, user)
        response = JSONResponse({"photos_removed": reply.photos_removed,
                                 "profile_removed": reply.profile_removed})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                               secure=settings.secure_cookies)
        return response

    @router.get("/api/me/photos", response_model=MyPhotos)
    async def my_photos(request: Request) -> MyPhotos:
        """The uploads your profile learned from, oldest first."""
        user = await identity.required(request)
        reply = await gateway.call("Photos", user_pb2.UserPhotosRequest(user_id=user))
        return MyPhotos(photos=[MyPhoto(photo_id=p, url=gateway.photo_url(p, user))
                                for p in reply.photo_ids])

    @router.delete("/api/me/photos/{photo_id}", response_model=Forgotten)
    async def delete_my_photo(request: Request, photo_id: str) -> Forgotten:
        user = await identity.required(request)
        reply = await gateway.call("Forget", user_pb2.ForgetRequest(user_id=user,
                                                                    photo_id=photo_id))
        gateway.uploads.remove(gateway.owner(user), photo_id)
        return Forgotten(photos_removed=reply.photos_removed,
                         profile_removed=reply.profile_removed)

    return router
