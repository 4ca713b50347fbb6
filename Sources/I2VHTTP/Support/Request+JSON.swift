import Foundation
import Hummingbird
import NIOCore
import I2VCore
import I2VGPUNode

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
