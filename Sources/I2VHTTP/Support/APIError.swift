import Foundation
import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode
import NIOCore

/// Every error but 422 has the body `{"detail":{"status":"Failed","reason":"…"}}`, as the reference
/// FastAPI service answers it.
public struct APIError: HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var reason: String
    public var headers: HTTPFields

    public init(_ status: HTTPResponse.Status, _ reason: String, headers: HTTPFields = [:]) {
        self.status = status
        self.reason = reason
        self.headers = headers
    }

    private struct Body: Encodable {
        struct Detail: Encodable {
            var status = "Failed"
            var reason: String

            init(reason: String) {
                self.reason = reason
            }
        }
        var detail: Detail
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        JSONBody.response(status: status, value: Body(detail: .init(reason: reason)), headers: headers)
    }

    package static func tooManyRequests(_ reason: String, retryAfter seconds: Int) -> APIError {
        APIError(.tooManyRequests, reason, headers: [.retryAfter: String(max(1, seconds))])
    }
}

/// One entry of a FastAPI-style 422 `detail` list.
public struct ValidationIssue: Encodable, Sendable, Equatable {
    public var type: String
    public var loc: [LocationPart]
    public var msg: String
    public var input: JSONValue?

    public enum LocationPart: Encodable, Sendable, Equatable {
        case key(String)
        case index(Int)

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .key(let key): try container.encode(key)
            case .index(let index): try container.encode(index)
            }
        }
    }

    package init(_ type: String, field: String?, _ msg: String, input: JSONValue?) {
        self.type = type
        self.loc = [.key("body")] + (field.map { [.key($0)] } ?? [])
        self.msg = msg
        self.input = input
    }

    /// An issue of a nested field: `loc` is its place under the body.
    package init(_ type: String, loc: [LocationPart], _ msg: String, input: JSONValue?) {
        self.type = type
        self.loc = [.key("body")] + loc
        self.msg = msg
        self.input = input
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(type, forKey: .type)
        try container.encode(loc, forKey: .loc)
        try container.encode(msg, forKey: .msg)
        if let input { try container.encode(input, forKey: .input) }
    }

    package enum CodingKeys: String, CodingKey { case type, loc, msg, input }
}

public struct RequestValidationError: HTTPResponseError, Sendable {
    public var issues: [ValidationIssue]
    public var status: HTTPResponse.Status { .unprocessableContent }

    private struct Body: Encodable { var detail: [ValidationIssue] }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        JSONBody.response(status: status, value: Body(detail: issues))
    }

    package init(issues: [ValidationIssue]) {
        self.issues = issues
    }
}

package enum JSONBody {
    package static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    package static func response(status: HTTPResponse.Status, value: some Encodable, headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        let data = (try? encoder.encode(value)) ?? Data(#"{"detail":{"status":"Failed","reason":"encoding failed"}}"#.utf8)
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
