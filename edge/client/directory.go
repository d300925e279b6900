package client

func (s *Server) routesDirectory() {}
