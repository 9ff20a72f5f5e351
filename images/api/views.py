"""Viewsets of the image API (/api/v1/images/). Thin: restrict() and images.selectors for reads, images.services
for writes.

The file endpoint streams both ways. An upload chunk goes from the request body straight to the image store:
``request.data`` is never touched (so DATA_UPLOAD_MAX_MEMORY_SIZE, which only guards ``request.body`` and form
parsing, does not apply) and the service reads ``Content-Length`` bytes from the Django request, a file-like
over the WSGI input. A download is a streaming FileResponse.
"""

from __future__ import annotations

import re

from django.db.models import Prefetch
from django.http import FileResponse
from django.utils.text import slugify
from django.utils.translation import gettext_lazy as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.filters import SearchFilter
from rest_framework.parsers import BaseParser, DataAndFiles
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from images import imports, selectors, services, sharing
from images.api.filtersets import ImageFilter, ImageShareFilter
from images.api.serializers import (
    ImageCreateSerializer,
    ImageDistributeSerializer,
    ImageImportSerializer,
    ImageSerializer,
    ImageShareRequestSerializer,
    ImageShareSerializer,
    ImageUpdateSerializer,
    UploadProgressSerializer,
)
from images.models import Image, ImageShare
from portal.access import CHANGE, DELETE
from portal.api.base import ApiViewSetMixin
from portal.api.exceptions import PROBLEM_CONTENT_TYPE, problem
from portal.api.ordering import StrictOrderingFilter
from portal.api.serializers import ProblemSerializer
from portal.services import ConflictError
from vms.api.serializers import OperationSerializer

CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)")
BINARY = "application/octet-stream"


class RawUploadParser(BaseParser):
    """Accepts a body of any content type without reading it: the upload view streams the body itself."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return DataAndFiles({}, {})


class UploadConflictSerializer(ProblemSerializer):
    """The problem document of an upload that does not continue where the stored part ends."""

    received_bytes = serializers.IntegerField(help_text=_("Bytes stored so far: resume the upload at this offset."))


def problem_response(description) -> OpenApiResponse:
    return OpenApiResponse(response=ProblemSerializer, description=description)


def download_name(image: Image) -> str:
    """An ASCII file name without path separators or quotes, whatever the image is called."""
    return f"{slugify(image.name) or 'image'}{image.path.suffix}"


@extend_schema_view(
    list=extend_schema(summary=_("Images you can use: public, your tenants' and shared with them (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One image")),
    create=extend_schema(
        summary=_("Announce an image upload (reserves quota); then PUT the file to its upload_url"),
        request=ImageCreateSerializer,
        responses={201: ImageSerializer},
    ),
    partial_update=extend_schema(
        summary=_("Change an image's description, requirements, protection or visibility"),
        request=ImageUpdateSerializer,
        responses={200: ImageSerializer},
    ),
    destroy=extend_schema(summary=_("Delete an image that is not protected, processing or used by an instance")),
)
class ImageViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Bootable disk images and installer ISOs. Members of the owner tenant change them; sharing lets other
    tenants use (not change or download) an image; public images are provided by the cloud admins."""

    model = Image
    serializer_class = ImageSerializer
    filterset_class = ImageFilter
    filter_backends = [DjangoFilterBackend, SearchFilter, StrictOrderingFilter]
    search_fields = ["name"]
    ordering_fields = ["name", "created_at", "size"]

    def get_queryset(self):
        return (
            selectors.images_for(user=self.request.user)
            .select_related("owner")
            .prefetch_related(
                Prefetch(
                    "shares",
                    queryset=ImageShare.objects.filter(status=ImageShare.Status.ACCEPTED).only("image_id", "tenant_id"),
                    to_attr="accepted_shares",
                )
            )
        )

    def perform_content_negotiation(self, request, force=False):
        if self.action == "download":
            # The file is not rendered; problems are JSON whatever the client accepts (no 406 for a download).
            renderer = JSONRenderer()
            return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)

    def _respond(self, image: Image, status_code: int = status.HTTP_200_OK) -> Response:
        image = self.get_queryset().get(pk=image.pk)  # as the list shows it
        return Response(self.get_serializer(image).data, status=status_code)

    def create(self, request, *args, **kwargs):
        serializer = ImageCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)  # a tenant the requester is not a member of "does not exist"
        data = dict(serializer.validated_data)
        image = services.create_image(actor=request.user, tenant=data.pop("tenant", None), ip=self.client_ip, **data)
        return self._respond(image, status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        image = self.get_object_for(CHANGE)
        serializer = ImageUpdateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        if serializer.validated_data:
            image = services.update_image(
                actor=request.user, image=image, ip=self.client_ip, **serializer.validated_data
            )
        return self._respond(image)

    def destroy(self, request, *args, **kwargs):
        image = self.get_object_for(DELETE)
        services.delete_image(actor=request.user, image=image, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)

    # ------------------------------------------------------------ the file: download and resumable upload

    @extend_schema(
        summary=_("Download the stored file (members of the owner tenant, cloud admins)"),
        responses={
            (200, BINARY): OpenApiResponse(response=OpenApiTypes.BINARY, description=_("The image file.")),
            (403, PROBLEM_CONTENT_TYPE): problem_response(
                _("Not a member of the owner tenant: shared and public images cannot be downloaded.")
            ),
            (409, PROBLEM_CONTENT_TYPE): problem_response(_("The image is not active.")),
        },
    )
    @action(detail=True, methods=["get"], url_path="file", url_name="file", parser_classes=[RawUploadParser])
    def download(self, request, *args, **kwargs):
        image = self.get_object()
        # Its tenant's members (unless captured from an image they could not download) and cloud admins.
        if not selectors.may_download(user=request.user, image=image):
            self.permission_denied(request, message=_("Only members of the owner tenant can download this image."))
        if image.status != Image.Status.ACTIVE:
            raise ConflictError(
                _("Image “%(name)s” is not active (status: %(status)s).") % {"name": image.name, "status": image.status}
            )
        try:
            handle = open(image.path, "rb")  # noqa: SIM115 - FileResponse closes it
        except FileNotFoundError as exc:
            raise ConflictError(_("The file of image “%(name)s” is missing.") % {"name": image.name}) from exc
        return FileResponse(handle, as_attachment=True, filename=download_name(image), content_type=BINARY)

    @extend_schema(
        summary=_("Upload the file, whole or in chunks (resumable)"),
        description=_(
            "The body is the raw bytes (any content type; `application/octet-stream` is usual). Without "
            "`Content-Range` it is the whole file. With `Content-Range: bytes START-END/TOTAL` it is one chunk: "
            "START must be the image's `received_bytes`, END-START+1 the `Content-Length` and TOTAL the announced "
            "size. A chunk at the wrong offset answers 409 with `received_bytes`, where to resume. The last byte "
            "queues the inspection and conversion (202, the image); poll the image or its operation."
        ),
        request={BINARY: OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter(
                "Content-Range",
                {"type": "string", "pattern": r"^bytes [0-9]+-[0-9]+/([0-9]+|\*)$"},
                OpenApiParameter.HEADER,
                description=_("`bytes START-END/TOTAL` (inclusive END); omit to send the whole file."),
            )
        ],
        responses={
            200: OpenApiResponse(UploadProgressSerializer, description=_("Chunk stored; more bytes are expected.")),
            202: OpenApiResponse(ImageSerializer, description=_("Last byte stored; the image is being processed.")),
            (409, PROBLEM_CONTENT_TYPE): OpenApiResponse(
                UploadConflictSerializer,
                description=_("Wrong offset (resume at `received_bytes`), or the image takes no upload."),
            ),
        },
    )
    @download.mapping.put
    def upload(self, request, *args, **kwargs):
        image = self.get_object_for(CHANGE)
        length = self._content_length()
        offset = self._chunk_offset(image, length)
        try:
            image = services.receive_chunk(
                actor=request.user,
                image=image,
                stream=request._request,  # the body, unread: streamed to the store in pieces
                offset=offset,
                length=length,
                ip=self.client_ip,
            )
        except ConflictError as exc:
            image.refresh_from_db(fields=["received_bytes"])
            return problem(
                status_code=exc.status,
                code=exc.code,
                title=str(_("Conflict")),
                detail=exc.message,
                received_bytes=image.received_bytes,
            )
        if image.status == Image.Status.UPLOADING:
            data = UploadProgressSerializer({"received_bytes": image.received_bytes, "status": image.status}).data
            return Response(data)
        return self._respond(image, status.HTTP_202_ACCEPTED)

    def _content_length(self) -> int:
        """The body's length: no Content-Length is an empty body, unless it comes chunked (length unknown)."""
        meta = self.request.META
        value = str(meta.get("CONTENT_LENGTH") or "").strip()
        if not value and not meta.get("HTTP_TRANSFER_ENCODING"):
            return 0
        if not value.isdigit():
            raise ValidationError({"Content-Length": [_("Send the chunk with a Content-Length header.")]})
        return int(value)

    def _chunk_offset(self, image: Image, length: int) -> int:
        """Where the chunk starts: 0 for a whole file, else START of a consistent ``Content-Range``."""
        header = self.request.META.get("HTTP_CONTENT_RANGE")
        if header is None:
            return 0
        match = CONTENT_RANGE.fullmatch(header.strip())
        if match is None:
            raise ValidationError({"Content-Range": [_("Use “bytes START-END/TOTAL”.")]})
        start, end, total = int(match[1]), int(match[2]), match[3]
        if end < start or end - start + 1 != length:
            message = _("The range holds %(n)d bytes, the body %(length)d.") % {
                "n": max(0, end - start + 1),
                "length": length,
            }
            raise ValidationError({"Content-Range": [message]})
        if total != "*" and int(total) != image.size:
            raise ValidationError(
                {"Content-Range": [_("The total must be the announced size, %(size)d bytes.") % {"size": image.size}]}
            )
        return start

    # ------------------------------------------------------------ import, sharing, distribution

    @extend_schema(
        summary=_("Import an image from an http(s) URL (the worker downloads it)"),
        request=ImageImportSerializer,
        responses={202: ImageSerializer},
    )
    @action(detail=False, methods=["post"], url_path="import", url_name="import")
    def import_image(self, request, *args, **kwargs):
        serializer = ImageImportSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        image = imports.import_image(actor=request.user, tenant=data.pop("tenant", None), ip=self.client_ip, **data)
        return self._respond(image, status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary=_("Offer an image to another tenant; it is pending until an admin of that tenant accepts it"),
        description=_(
            "Members of the owner tenant and cloud admins. Name the tenant by id or slug: every tenant but the "
            "owner gets the same answer, a pending share, whether it exists or not (a reference that names no "
            "tenant stays pending). The tenant sees and launches the image only once one of its admins accepts "
            "it (`POST /image-shares/{id}/accept/`). Sharing again under the same reference answers that share."
        ),
        request=ImageShareRequestSerializer,
        responses={202: ImageShareSerializer},
    )
    @action(detail=True, methods=["post"])
    def share(self, request, *args, **kwargs):
        image = self.get_object_for(CHANGE)
        serializer = ImageShareRequestSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        share = sharing.share_image(
            actor=request.user, image=image, reference=serializer.validated_data["tenant"], ip=self.client_ip
        )
        share = selectors.shares_for(user=request.user).get(pk=share.pk)
        context = self.get_serializer_context()
        return Response(ImageShareSerializer(share, context=context).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary=_("Withdraw a share, pending or answered (members of the owner tenant, cloud admins)"),
        description=_(
            "Takes back the share under this reference, and the accepted share of the tenant it names. The answer "
            "is the image, whether there was a share to withdraw or not."
        ),
        request=ImageShareRequestSerializer,
        responses={200: ImageSerializer},
    )
    @action(detail=True, methods=["post"])
    def unshare(self, request, *args, **kwargs):
        image = self.get_object_for(CHANGE)
        serializer = ImageShareRequestSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        image = sharing.unshare_image(
            actor=request.user, image=image, reference=serializer.validated_data["tenant"], ip=self.client_ip
        )
        return self._respond(image)

    @extend_schema(
        summary=_("Copy an active image to a host ahead of launches (cloud admins)"),
        request=ImageDistributeSerializer,
        responses={202: OperationSerializer},
    )
    @action(detail=True, methods=["post"])
    def distribute(self, request, *args, **kwargs):
        image = self.get_object()
        self.require_cloud_admin(_("Only cloud admins can distribute images to hosts."))
        serializer = ImageDistributeSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        operation = services.request_distribution(
            actor=request.user, image=image, host=serializer.validated_data["host"], ip=self.client_ip
        )
        return Response(OperationSerializer(operation).data, status=status.HTTP_202_ACCEPTED)


@extend_schema_view(
    list=extend_schema(
        summary=_("Shares of images: offered to your tenants (incoming) and of your tenants' images (outgoing)")
    ),
    retrieve=extend_schema(summary=_("One share")),
    destroy=extend_schema(summary=_("Withdraw a share (members of the image's owner tenant, cloud admins)")),
)
class ImageShareViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Images offered from one tenant to another, as Glance image members: pending until an admin of the
    receiving tenant accepts or rejects them. The receiving tenant's members see what is offered to it; its
    admins answer; the owner tenant's members see the status of their shares and withdraw them."""

    model = ImageShare
    serializer_class = ImageShareSerializer
    filterset_class = ImageShareFilter
    ordering_fields = ["created_at", "decided_at", "status"]
    ordering = ["-created_at", "-id"]

    def get_queryset(self):
        return selectors.shares_for(user=self.request.user)

    def _respond(self, share: ImageShare) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=share.pk)).data)

    def destroy(self, request, *args, **kwargs):
        share = self.get_object_for(DELETE)
        sharing.withdraw_share(actor=request.user, share=share, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary=_("Accept a share: the image joins the tenant's catalogue (the tenant's admins, cloud admins)"),
        request=None,
        responses={200: ImageShareSerializer},
    )
    @action(detail=True, methods=["post"])
    def accept(self, request, *args, **kwargs):
        share = self.get_object_for(CHANGE)
        return self._respond(sharing.accept_share(actor=request.user, share=share, ip=self.client_ip))

    @extend_schema(
        summary=_("Reject a share, or remove an accepted image from the tenant's catalogue (the tenant's admins)"),
        request=None,
        responses={200: ImageShareSerializer},
    )
    @action(detail=True, methods=["post"])
    def reject(self, request, *args, **kwargs):
        share = self.get_object_for(CHANGE)
        return self._respond(sharing.reject_share(actor=request.user, share=share, ip=self.client_ip))
