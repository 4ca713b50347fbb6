import Foundation
import Hummingbird
import I2VCore
import I2VGPUNode
import ImageIntake
import MultipartKit
import NIOCore

/// A `multipart/form-data` create request: its text fields, the `input_reference` file's bytes, and the
/// `last_image` file's (the frame the video ends on, for a model that takes one).
package struct VideoForm: Sendable, Equatable {
    package var fields: [String: String] = [:]
    /// The `loras[…]` fields in the order they came: a list of objects flattened into a form repeats its keys
    /// (`loras[][name]`, `loras[][scale]`, `loras[][name]`, …), so order is what tells one LoRA from the next.
    package var loraFields: [LoRAFormField] = []
    package var imageBytes: [UInt8]?
    package var lastImageBytes: [UInt8]?

    package init(fields: [String: String] = [:], imageBytes: [UInt8]? = nil, lastImageBytes: [UInt8]? = nil) {
        self.fields = fields
        self.imageBytes = imageBytes
        self.lastImageBytes = lastImageBytes
    }
}

/// Why a form could not be read.
package enum VideoFormFailure: Error, Sendable, Equatable {
    case malformed(String)
    /// The text fields together passed their cap.
    case fieldsTooLarge(limit: Int)
    /// The whole body passed the image's cap plus the fields' (only framing can make up the difference).
    case bodyTooLarge(limit: Int)
    /// The file passed the image byte cap (or another intake check that applies to raw bytes).
    case image(ImageIntakeError)
}

/// Reads a form part by part while the body streams, so the image's byte cap stops an oversized upload
/// as soon as it is passed and no more than the cap is ever held.
package enum VideoFormReader {
    package static let imageField = "input_reference"
    package static let lastImageField = "last_image"
    static let imageFields: Set<String> = [imageField, lastImageField]

    /// The `boundary` parameter of a `multipart/form-data` Content-Type; nil for any other type.
    package static func boundary(contentType: String) -> String? {
        let parts = contentType.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.first?.lowercased() == "multipart/form-data" else { return nil }
        for parameter in parts.dropFirst() {
            guard let equals = parameter.firstIndex(of: "="),
                parameter[..<equals].trimmingCharacters(in: .whitespaces).lowercased() == "boundary"
            else { continue }
            var value = parameter[parameter.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            // RFC 2046: 1 to 70 characters.
            return (1...70).contains(value.utf8.count) ? value : nil
        }
        return nil
    }

    package static func read<Body: AsyncSequence>(
        _ body: Body,
        boundary: String,
        upload: ImageUpload,
        fieldLimit: Int,
        spoolingTo spoolDirectory: URL
    ) async throws -> VideoForm where Body.Element == ByteBuffer {
        let collector = Collector(upload: upload, fieldLimit: fieldLimit, spoolDirectory: spoolDirectory)
        let parser = MultipartParser(boundary: boundary)
        parser.onHeader = { name, value in collector.header(name: name, value: value) }
        parser.onBody = { buffer in collector.body(&buffer) }
        parser.onPartComplete = { collector.complete() }
        // Parts hold at most the two images and the fields; the rest is framing, which the parser does not
        // keep (a preamble, say) but which must not stream on for ever either.
        let limit = 2 * upload.maxBytes + fieldLimit + 64 * 1024
        var received = 0
        // The parser takes a body that stops early for one that ends there, losing the part it was in
        // (the image, most often): only the closing delimiter tells a whole form from a cut one.
        var closing = DelimiterScanner(delimiter: "\r\n--\(boundary)--")
        for try await chunk in body {
            received += chunk.readableBytes
            guard received <= limit else { throw VideoFormFailure.bodyTooLarge(limit: limit) }
            closing.scan(chunk)
            do {
                try parser.execute(chunk)
            } catch {
                throw VideoFormFailure.malformed("the multipart body is malformed")
            }
            if let failure = collector.failure { throw failure }
            if let error = collector.spoolError { throw error }
        }
        guard collector.completedParts > 0 else {
            throw VideoFormFailure.malformed("the multipart body has no complete part (is its boundary \"\(boundary)\"?)")
        }
        guard closing.found else {
            throw VideoFormFailure.malformed("the multipart body is truncated: it ends before its closing boundary --\(boundary)--")
        }
        var form = collector.form
        form.imageBytes = try collector.images[imageField]?.finish()
        form.lastImageBytes = try collector.images[lastImageField]?.finish()
        return form
    }

    /// Looks for one byte string in a stream as it goes by, each byte looked at once (Knuth–Morris–Pratt),
    /// so a body of any size costs no more than one pass and no copies.
    struct DelimiterScanner {
        private let delimiter: [UInt8]
        /// For each prefix of the delimiter, the longest proper prefix that is also its suffix.
        private let fallback: [Int]
        private var matched = 0
        private(set) var found = false

        init(delimiter: String) {
            let bytes = Array(delimiter.utf8)
            var fallback = Array(repeating: 0, count: bytes.count)
            var length = 0
            for index in bytes.indices.dropFirst() {
                while length > 0, bytes[index] != bytes[length] { length = fallback[length - 1] }
                if bytes[index] == bytes[length] { length += 1 }
                fallback[index] = length
            }
            self.delimiter = bytes
            self.fallback = fallback
        }

        mutating func scan(_ buffer: ByteBuffer) {
            guard !found, !delimiter.isEmpty else { return }
            for byte in buffer.readableBytesView {
                while matched > 0, byte != delimiter[matched] { matched = fallback[matched - 1] }
                if byte == delimiter[matched] { matched += 1 }
                if matched == delimiter.count {
                    found = true
                    return
                }
            }
        }
    }

    /// The parser's callbacks cannot throw: the first failure is kept here and ends the read after the
    /// chunk in hand, and nothing more is kept once there is one. The image waits in a `BodySpool` until
    /// the whole form is in, so a stalled upload does not hold it in memory.
    private final class Collector {
        enum Part {
            case image(name: String)
            case field(name: String, bytes: [UInt8])
            case ignored
        }

        var form = VideoForm()
        var failure: VideoFormFailure?
        /// The spool's own failure (a full disk, say): the server's, not the form's.
        var spoolError: (any Error)?
        var completedParts = 0
        /// The complete image parts' bytes, by field.
        private(set) var images: [String: BodySpool] = [:]
        private let maxImageBytes: Int
        private let spoolDirectory: URL
        private var imagePart: BodySpool?
        private let fieldLimit: Int
        private var fieldBytes = 0
        private var headers = HTTPHeaders()
        private var part: Part?

        init(upload: ImageUpload, fieldLimit: Int, spoolDirectory: URL) {
            self.maxImageBytes = upload.maxBytes
            self.fieldLimit = fieldLimit
            self.spoolDirectory = spoolDirectory
        }

        func header(name: String, value: String) {
            headers.add(name: name, value: value)
        }

        /// The part's kind, once its headers are all in (at its first body bytes, or its end).
        private func currentPart() -> Part {
            if let part { return part }
            let name = MultipartPart(headers: headers, body: ByteBuffer()).name
            let kind: Part
            switch name {
            case let name? where VideoFormReader.imageFields.contains(name) && images[name] != nil:
                failure = failure ?? .malformed("only one \(name) file may be sent")
                kind = .ignored
            case let name? where VideoFormReader.imageFields.contains(name):
                kind = .image(name: name)
                imagePart = BodySpool(directory: spoolDirectory)
            case let name?:
                kind = .field(name: name, bytes: [])
            case nil:
                kind = .ignored
            }
            part = kind
            return kind
        }

        func body(_ buffer: inout ByteBuffer) {
            guard failure == nil, spoolError == nil else { return }
            switch currentPart() {
            case .image:
                guard let imagePart else { return }
                guard imagePart.count + buffer.readableBytes <= maxImageBytes else {
                    failure = .image(ImageUpload.tooLarge(maxBytes: maxImageBytes))
                    return
                }
                do {
                    try imagePart.append(buffer.readableBytesView)
                } catch {
                    spoolError = error
                }
            case .field(let name, var bytes):
                fieldBytes += buffer.readableBytes
                guard fieldBytes <= fieldLimit else {
                    failure = .fieldsTooLarge(limit: fieldLimit)
                    return
                }
                part = nil
                bytes.append(contentsOf: buffer.readableBytesView)
                part = .field(name: name, bytes: bytes)
            case .ignored:
                // Parts this API does not read still count against the cap.
                fieldBytes += buffer.readableBytes
                if fieldBytes > fieldLimit { failure = .fieldsTooLarge(limit: fieldLimit) }
            }
        }

        func complete() {
            defer {
                headers = HTTPHeaders()
                part = nil
            }
            guard failure == nil else { return }
            completedParts += 1
            switch currentPart() {
            case .image(let name):
                images[name] = imagePart
                imagePart = nil
            case .field(let name, let bytes):
                guard let text = String(validating: bytes, as: UTF8.self) else {
                    failure = .malformed("the form field \(name) is not UTF-8 text")
                    return
                }
                if name.hasPrefix("loras[") {
                    form.loraFields.append(LoRAFormField(name: name, value: text))
                } else if form.fields[name] == nil {
                    // A repeated field keeps its first value, as most form parsers do.
                    form.fields[name] = text
                }
            case .ignored:
                break
            }
        }
    }
}

/// One `loras[…]` text field of a form.
package struct LoRAFormField: Sendable, Equatable {
    package var name: String
    package var value: String

    package init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}
