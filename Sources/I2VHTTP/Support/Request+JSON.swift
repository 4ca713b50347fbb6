import Foundation
import Hummingbird
import I2VCore
import I2VGPUNode
import NIOCore

extension Request {
    /// The body, capped at `limit` bytes (413 beyond it).
    package func cappedBody(limit: Int) async throws -> ByteBuffer {
        var request = self
        do {
            return try await request.collectBody(upTo: limit)
        } catch let error as any HTTPResponseError where error.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "request body is larger than \(limit) bytes")
        }
    }

    /// The body parsed as JSON, capped at `limit` bytes (413 beyond it), 422 when it is not JSON.
    package func jsonBody(limit: Int) async throws -> JSONValue {
        try JSONValue.parseBody(try await cappedBody(limit: limit))
    }

    /// As `jsonBody(limit:)`, for a limit far above the other bodies' (an image in a data: URL): past its
    /// first KiB the body waits in `BodySpool` while it arrives, not in memory.
    func jsonBody(limit: Int, spoolingTo directory: URL) async throws -> JSONValue {
        let spool = BodySpool(directory: directory)
        for try await chunk in body {
            guard spool.count + chunk.readableBytes <= limit else {
                throw APIError(.contentTooLarge, "request body is larger than \(limit) bytes")
            }
            try spool.append(chunk.readableBytesView)
        }
        return try JSONValue.parseBody(ByteBuffer(bytes: try spool.finish()))
    }

    /// The `requestId` of a `/video/status` or `/video/cancel` body. The common, valid body takes a typed
    /// decode; anything else goes through full validation for its 422 answer.
    package func requestID(limit: Int) async throws -> String {
        struct Body: Decodable { var requestId: String }
        let buffer = try await cappedBody(limit: limit)
        if let body = try? JSONDecoder().decode(Body.self, from: Data(buffer.readableBytesView)),
            body.requestId.unicodeScalars.count == 32
        {
            return body.requestId
        }
        return try SubmitRequest.requestID(try JSONValue.parseBody(buffer))
    }
}
