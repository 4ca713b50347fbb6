import Hummingbird
import NIOCore

/// `GET /`: the playground page. No key is needed to load it; the page asks for one and sends it with
/// every API call it makes.
struct PlaygroundController: Sendable {
    /// Built once: the page is a constant.
    static let body = ByteBuffer(string: PlaygroundPage.html)

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("/") { _, _ in
            Response(status: .ok, headers: PlaygroundPage.headers, body: .init(byteBuffer: Self.body))
        }
    }
}
