package client

func (s *Server) routesKeys() {}
