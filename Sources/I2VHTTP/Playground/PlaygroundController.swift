import Hummingbird
import I2VCore
import I2VGPUNode
import NIOCore

/// `GET /`: the playground page. No key is needed to load it; the page asks for one and sends it with
/// every API call it makes.
package struct PlaygroundController: Sendable {
    package init() {}

    /// Built once: the page is a constant.
    package static let body = ByteBuffer(string: PlaygroundPage.html)

    package func addRoutes(to router: Router<AppRequestContext>) {
        router.get("/") { _, _ in
            Response(status: .ok, headers: PlaygroundPage.headers, body: .init(byteBuffer: Self.body))
        }
    }
}
