package client

func (s *Server) routesPush() {}
