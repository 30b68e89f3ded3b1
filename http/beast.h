// http/beast.h — the Boost.Asio/Beast names the HTTP server and client share (private to
// http/*.cpp; the public headers don't expose Beast).
#pragma once

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace lethe::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

}  // namespace lethe::http
