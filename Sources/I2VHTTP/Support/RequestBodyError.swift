import HTTPTypes

/// Why a request body stopped short of its end. The body a route reads throws this in place of the
/// decoder's or the socket's own error, and in place of simply ending when the connection closes (which
/// Hummingbird would hand over as a complete body), so a route never acts on part of a body and can
/// tell a client's fault from the server's.
package enum RequestBodyError: Error, Sendable, Equatable {
    /// The client closed or reset the connection first; nobody is left to answer.
    case clientClosed
    /// Not complete within the body timeout, or slower than the minimum rate: answered 408.
    case timedOut(String)
    /// Not valid HTTP framing (a chunk size that is not a number, a chunk shorter than its size): answered 400.
    case malformed(String)

    package var status: HTTPResponse.Status {
        switch self {
        case .clientClosed, .malformed: .badRequest
        case .timedOut: .requestTimeout
        }
    }

    package var reason: String {
        switch self {
        case .clientClosed: "the connection was closed before the request body was complete"
        case .timedOut(let reason), .malformed(let reason): reason
        }
    }

    /// The `code` of its OpenAI-shaped answer.
    package var openAICode: String {
        switch self {
        case .clientClosed: "client_closed"
        case .timedOut: "request_timeout"
        case .malformed: "malformed_body"
        }
    }
}
