import Foundation

/// The bytes of an image that arrives inside a request (a multipart file part, or a `data:` URL) rather
/// than from a URL the service downloads. The byte cap is the download's: it is checked as the bytes
/// arrive, so an oversized upload is refused while it is still streaming and never held whole. The other
/// checks (pixels from the header, formats, aspect) are the download's too: `ImageIntake.prepare(imageBytes:…)`.
public struct ImageUpload: Sendable {
    public let maxBytes: Int
    public private(set) var bytes: [UInt8] = []

    public init(maxBytes: Int) {
        self.maxBytes = maxBytes
    }

    /// Adds the next piece; throws `tooLarge` as soon as the total passes the cap.
    public mutating func append(contentsOf piece: some Collection<UInt8>) throws(ImageIntakeError) {
        guard bytes.count + piece.count <= maxBytes else { throw Self.tooLarge(maxBytes: maxBytes) }
        bytes.append(contentsOf: piece)
    }

    /// The refusal of an image over the cap, for readers that hold its bytes elsewhere while they count them.
    public static func tooLarge(maxBytes: Int) -> ImageIntakeError {
        ImageIntakeError(.tooLarge, "image is larger than \(maxBytes) bytes")
    }

    /// The image carried by a `data:image/…;base64,…` URL (RFC 2397). Only base64 image data is taken:
    /// that is what browsers and SDKs produce for images. The size is checked on the encoded text before
    /// anything is decoded.
    public static func decodeDataURL(_ url: String, maxBytes: Int) throws(ImageIntakeError) -> [UInt8] {
        guard url.utf8.count > 5, url.prefix(5).lowercased() == "data:", let comma = url.firstIndex(of: ",") else {
            throw ImageIntakeError(.invalidURL, "not a data: URL (expected data:image/…;base64,…)")
        }
        let header = url[url.index(url.startIndex, offsetBy: 5)..<comma].lowercased()
        let parameters = header.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
        guard let mediaType = parameters.first, mediaType.hasPrefix("image/") else {
            throw ImageIntakeError(.notAnImage, "the data: URL does not carry an image (expected data:image/…;base64,…)")
        }
        guard parameters.dropFirst().contains("base64") else {
            throw ImageIntakeError(.invalidURL, "the data: URL must be base64-encoded (data:\(mediaType);base64,…)")
        }
        let payload = url[url.index(after: comma)...]
        // Four characters carry three bytes; whitespace is allowed between them and only makes this looser.
        guard payload.utf8.count / 4 * 3 <= maxBytes + 2 else { throw tooLarge(maxBytes: maxBytes) }
        guard let data = Data(base64Encoded: String(payload), options: .ignoreUnknownCharacters), !data.isEmpty else {
            throw ImageIntakeError(.notAnImage, "the data: URL's base64 payload could not be decoded")
        }
        guard data.count <= maxBytes else { throw tooLarge(maxBytes: maxBytes) }
        return Array(data)
    }
}

extension ImageIntake {
    /// An empty upload under this intake's byte cap.
    public func upload() -> ImageUpload {
        ImageUpload(maxBytes: configuration.maxBytes)
    }

    /// Decodes a `data:` image URL under this intake's byte cap.
    public func decodeDataURL(_ url: String) throws(ImageIntakeError) -> [UInt8] {
        try ImageUpload.decodeDataURL(url, maxBytes: configuration.maxBytes)
    }
}
